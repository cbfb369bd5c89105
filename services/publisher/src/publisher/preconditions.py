"""Optimistic concurrency over HTTP (RFC 9110, section 13): a blog's strong ETag is its version;
`If-Match` on PUT/DELETE makes the write conditional on it, `If-None-Match` on GET saves a body."""

from __future__ import annotations

import re
from dataclasses import dataclass

# An entity tag: optional weakness marker, then an opaque quoted string (which may hold commas).
ENTITY_TAG = re.compile(r'\s*(W/)?"([^"]*)"\s*(?:,|$)')


def etag(version: int) -> str:
    return f'"{version}"'


def _entity_tags(value: str) -> list[tuple[bool, str]] | None:
    """(weak, opaque) of each entity tag of a list; None when the list is malformed."""
    tags: list[tuple[bool, str]] = []
    position = 0
    while position < len(value):
        match = ENTITY_TAG.match(value, position)
        if match is None:
            return None
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return tags


@dataclass(frozen=True)
class IfMatch:
    """A parsed `If-Match` header."""

    header: str
    any_version: bool  # `*`: any current representation
    versions: frozenset[int]  # the versions named by strong entity tags

    def matches(self, version: int) -> bool:
        return self.any_version or version in self.versions


def parse_if_match(value: str | None) -> IfMatch | None:
    """None when the header is absent (the write is unconditional). If-Match compares strongly:
    weak tags, and tags that are not versions, match nothing (so the answer is a 412)."""
    if value is None:
        return None
    if value.strip() == "*":
        return IfMatch(value, any_version=True, versions=frozenset())
    versions = {
        int(opaque)
        for weak, opaque in _entity_tags(value) or []
        if not weak and opaque.isdigit() and len(opaque) < 12
    }
    return IfMatch(value, any_version=False, versions=frozenset(versions))


def none_match(value: str | None, version: int) -> bool:
    """Whether `If-None-Match` names the current version (weak comparison): then a GET answers
    304 Not Modified."""
    if value is None:
        return False
    if value.strip() == "*":
        return True
    return any(opaque == str(version) for _, opaque in _entity_tags(value) or [])
