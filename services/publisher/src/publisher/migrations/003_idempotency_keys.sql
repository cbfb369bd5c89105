-- Idempotency-Key (IETF httpapi draft): the first answer to a write, kept per author and key, so
-- a retried request gets that answer again instead of a second write. Written in the same
-- transaction as the write itself; expired keys are purged.
CREATE TABLE publisher.idempotency_keys (
    author_id       uuid        NOT NULL REFERENCES publisher.authors (id),
    key             text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- sha256 of the request (method, path, If-Match, normalised body): same key, other request
    -- -> 422.
    request_hash    bytea       NOT NULL CHECK (length(request_hash) = 32),
    response_status integer     NOT NULL,
    response_body   jsonb       NOT NULL,
    response_headers jsonb      NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (author_id, key)
);
CREATE INDEX idempotency_keys_expiry_idx ON publisher.idempotency_keys (expires_at);
