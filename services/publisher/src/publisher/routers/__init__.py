"""The publisher's HTTP routes, one router per concern: `blogs` (writes and reads), `status`
(has each consumer group applied a blog's event?), `ops` (probes and metrics)."""
