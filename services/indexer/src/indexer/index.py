"""The blog index: its explicit mapping and its creation behind the alias at start-up."""

from __future__ import annotations

import logging
from typing import Any

from elasticsearch import AsyncElasticsearch, BadRequestError

log = logging.getLogger(__name__)

# Explicit so that nothing depends on dynamic mapping guesses. `dynamic: false` keeps any field a
# newer producer adds in `_source` without mapping it (and without failing the bulk).
# Only the `standard` analyzer is used: it exists on every Elasticsearch build, including the
# stripped integ-test server that has no language analyzers.
MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "blog_id": {"type": "keyword"},
        "author_id": {"type": "keyword"},
        "title": {"type": "text", "analyzer": "standard"},
        "body": {"type": "text", "analyzer": "standard"},
        "tags": {"type": "keyword"},
        "version": {"type": "long"},
        "published_at": {"type": "date"},
        "updated_at": {"type": "date"},
        "deleted": {"type": "boolean"},
    },
}


async def ensure_index(es: AsyncElasticsearch, alias: str, index_name: str) -> bool:
    """Create `index_name` with the mapping and `alias` pointing at it, unless the alias exists.

    Safe when several instances start at once: the index and its alias are created in one
    request, and losing that race (`resource_already_exists_exception`) is success. Returns
    whether this call created the index.
    """
    if await es.indices.exists_alias(name=alias):
        return False
    try:
        await es.indices.create(
            index=index_name,
            mappings=MAPPINGS,
            aliases={alias: {"is_write_index": True}},
        )
    except BadRequestError as exc:
        if exc.error != "resource_already_exists_exception":
            raise
        # The index exists (another instance won the race, or the alias was removed by hand):
        # make sure the alias points at it. Putting an existing alias again is a no-op.
        await es.indices.put_alias(index=index_name, name=alias, is_write_index=True)
        return False
    log.info("created index %s behind alias %s", index_name, alias)
    return True
