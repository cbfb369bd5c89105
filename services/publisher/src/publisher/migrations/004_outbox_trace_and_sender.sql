-- The write's W3C trace context (the request's `traceparent`, NULL with tracing off): the relay
-- sends the event in it, as the Kafka record's `traceparent` header, so the consumers' spans
-- join the write's trace.
-- Which relay marked the row sent (`host:pid`, the pod's name on Kubernetes): marks go through
-- the leader's lock session, so after a takeover the rows show who sent what.
ALTER TABLE publisher.outbox
    ADD COLUMN traceparent text CHECK (length(traceparent) <= 128),
    ADD COLUMN sent_by     text;
