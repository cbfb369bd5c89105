"""Lag monitor: how far behind every consumer group of the watched topics is, in messages and
seconds, and whether it is stuck (Burrow-style status), read from Kafka itself, so a group whose
consumers are all dead is still reported."""
