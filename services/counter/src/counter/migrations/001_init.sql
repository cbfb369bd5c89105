-- What the counter has applied, per blog: the newest version seen and whether the blog is live.
-- The version guard on this row is what makes redelivered, duplicated and replayed events no-ops.
-- The schema `counter` exists already: the migrations runner creates it when missing (on a
-- deployment it is created for the service's role, which may not create schemas).

CREATE TABLE counter.blog_state (
    blog_id          uuid        PRIMARY KEY,
    author_id        uuid        NOT NULL,
    version          int         NOT NULL CHECK (version >= 1),
    live             boolean     NOT NULL,
    applied_event_id uuid,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per author: a profile read is a primary-key lookup, no COUNT(*).
CREATE TABLE counter.author_stats (
    author_id   uuid PRIMARY KEY,
    total_blogs int  NOT NULL CHECK (total_blogs >= 0)
);
