-- A row Kafka refuses for good (too large, invalid) is parked with the reason instead of blocking
-- every row behind it; `python -m publisher outbox retry-parked` puts it back in the queue.
ALTER TABLE publisher.outbox
    ADD COLUMN parked_at     timestamptz,
    ADD COLUMN parked_reason text;

-- The relay's work queue: unsent rows that are not parked, in insertion order.
DROP INDEX publisher.outbox_unsent_idx;
CREATE INDEX outbox_unsent_idx ON publisher.outbox (id) WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked_idx ON publisher.outbox (id) WHERE parked_at IS NOT NULL;
