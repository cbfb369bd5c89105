"""Consumer group `counter`: keeps each author's `total_blogs` pre-computed in PostgreSQL
(schema `counter`), applied exactly once per blog version, and serves it over HTTP."""
