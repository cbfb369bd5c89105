"""The resilience tests run the whole system as processes, like the end-to-end tests: the
`pipeline` fixture is the e2e one (publisher, counter, indexer on a fresh database, topic,
consumer groups and index alias)."""

from tests.e2e.conftest import pipeline

__all__ = ["pipeline"]
