"""Consumer group `indexer`: keeps the Elasticsearch alias `blogs` in step with the blog events
(document id = blog id, external versioning, tombstones for deletes) and serves search."""
