"""Cross-service fixtures: `pipeline` starts publisher, counter and indexer as processes."""

from tests.pipeline import pipeline

__all__ = ["pipeline"]
