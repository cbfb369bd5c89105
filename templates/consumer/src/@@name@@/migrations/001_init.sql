-- What this group has applied, per blog: the newest version seen, whether the blog is live and
-- its tags. The version guard on this row makes redelivered, duplicated and replayed events
-- no-ops. The schema `@@name@@` exists already: the migrations runner creates it when missing (on
-- a deployment it is created for the service's role, which may not create schemas).

CREATE TABLE @@name@@.blog_state (
    blog_id          uuid        PRIMARY KEY,
    version          int         NOT NULL CHECK (version >= 1),
    live             boolean     NOT NULL,
    tags             text[]      NOT NULL DEFAULT '{}',
    applied_event_id uuid,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per tag with live blogs: a read is a primary-key lookup (or a small sort), no COUNT(*).
CREATE TABLE @@name@@.tag_counts (
    tag        text PRIMARY KEY,
    live_blogs int  NOT NULL CHECK (live_blogs >= 0)
);
