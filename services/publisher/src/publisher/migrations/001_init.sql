-- The publisher's own schema: authors and their API tokens, blogs, and the transactional outbox.
-- The schema `publisher` exists already: the migrations runner creates it when missing (on a
-- deployment it is created for the service's role, which may not create schemas).

CREATE TABLE publisher.authors (
    id         uuid PRIMARY KEY,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Only the sha256 of a token is stored: tokens are 32 random bytes, so a fast hash is enough
-- (no dictionary to defend against) and lookups stay a primary-key probe.
CREATE TABLE publisher.api_tokens (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    author_id  uuid NOT NULL REFERENCES publisher.authors (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX api_tokens_author_idx ON publisher.api_tokens (author_id);

CREATE TABLE publisher.blogs (
    id         uuid PRIMARY KEY,
    author_id  uuid NOT NULL REFERENCES publisher.authors (id),
    title      text NOT NULL,
    body       text NOT NULL,
    tags       text[] NOT NULL DEFAULT '{}',
    version    integer NOT NULL CHECK (version >= 1),
    deleted_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Keyset pagination of an author's live blogs, newest first.
CREATE INDEX blogs_author_live_idx ON publisher.blogs (author_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

CREATE TABLE publisher.outbox (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    blog_id         uuid NOT NULL,
    version         integer NOT NULL,
    topic           text NOT NULL,
    key             text NOT NULL,
    -- The exact bytes that go on the wire, so a resend is byte-identical.
    payload         bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    kafka_partition integer,
    kafka_offset    bigint
);
-- The relay's work queue: only unsent rows, in insertion order.
CREATE INDEX outbox_unsent_idx ON publisher.outbox (id) WHERE sent_at IS NULL;
-- The status endpoint: the event of a given blog version.
CREATE INDEX outbox_blog_version_idx ON publisher.outbox (blog_id, version);

-- Wake the relay as soon as a writing transaction commits (NOTIFY is delivered on commit, and
-- one per statement is enough).
CREATE FUNCTION publisher.notify_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('publisher_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON publisher.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION publisher.notify_outbox();
