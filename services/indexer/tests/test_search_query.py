"""Unit tests: the search request body and the shaping of the response."""

from __future__ import annotations

from indexer.search import search_body, search_response


def test_full_text_query_weights_title_and_filters_tombstones() -> None:
    body = search_body(q=" kafka ", author="a1", tag="python", page=3, size=20)
    query = body["query"]["bool"]
    assert query["must"] == [{"multi_match": {"query": "kafka", "fields": ["title^2", "body"]}}]
    assert query["filter"] == [{"term": {"author_id": "a1"}}, {"term": {"tags": "python"}}]
    assert query["must_not"] == [{"term": {"deleted": True}}]
    assert body["sort"][0] == "_score"
    assert body["track_scores"] is True
    assert (body["from_"], body["size"]) == (40, 20)
    assert body["highlight"]["pre_tags"] == ["<em>"]
    assert set(body["highlight"]["fields"]) == {"title", "body"}


def test_without_query_text_newest_first() -> None:
    for q in (None, "", "   "):
        body = search_body(q=q, author=None, tag=None, page=1, size=10)
        assert body["query"]["bool"]["must"] == [{"match_all": {}}]
        assert body["query"]["bool"]["filter"] == []
        assert body["sort"][0] == {"published_at": "desc"}
        assert body["from_"] == 0


def test_response_shape_with_and_without_highlights() -> None:
    raw = {
        "hits": {
            "total": {"value": 42, "relation": "eq"},
            "hits": [
                {
                    "_score": 1.5,
                    "_source": {
                        "blog_id": "b1",
                        "author_id": "a1",
                        "title": "Kafka",
                        "tags": ["x"],
                        "version": 2,
                        "published_at": "2025-01-01T00:00:00+00:00",
                        "updated_at": "2025-01-02T00:00:00+00:00",
                        "deleted": False,
                    },
                    "highlight": {"title": ["<em>Kafka</em>"]},
                },
                {
                    "_score": None,
                    "_source": {
                        "blog_id": "b2",
                        "author_id": "a1",
                        "title": "Other",
                        "version": 1,
                        "published_at": "2025-01-01T00:00:00+00:00",
                        "updated_at": None,
                    },
                },
            ],
        }
    }
    response = search_response(raw, page=2, size=2)
    assert (response.total, response.page, response.size) == (42, 2, 2)
    first, second = response.hits
    assert first.highlights.title == ["<em>Kafka</em>"]
    assert first.highlights.body == []
    assert first.score == 1.5
    assert second.tags == []
    assert second.highlights.model_dump() == {"title": [], "body": []}
