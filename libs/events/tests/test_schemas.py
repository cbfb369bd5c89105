"""The committed JSON Schemas are the models' schemas: a model change without `make schemas`
fails here (and in CI), so a producer cannot silently change what consumers must parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blog_events import Envelope, schemas


def test_schema_directory_is_the_committed_one() -> None:
    committed = Path(__file__).resolve().parents[1] / "schemas"
    assert committed == schemas.SCHEMA_DIR


@pytest.mark.parametrize("model", schemas.MODELS, ids=lambda m: m.__name__)
def test_schema_on_disk_equals_model(model: type) -> None:
    path = schemas.SCHEMA_DIR / f"{model.__name__}.json"
    assert path.exists(), f"{path} is missing: {schemas.REGENERATE_HINT}"
    on_disk = path.read_text(encoding="utf-8")
    assert on_disk == schemas.render_schema(model), (
        f"{path.name} differs from the {model.__name__} model: {schemas.REGENERATE_HINT}"
    )


def test_rendering_is_deterministic_and_sorted() -> None:
    first = schemas.expected_files()
    second = schemas.expected_files()
    assert first == second
    for name, text in first.items():
        assert text.endswith("}\n"), name
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n", name


def test_envelope_schema_describes_all_payloads() -> None:
    envelope = json.loads(schemas.render_schema(Envelope))
    assert set(envelope["$defs"]) >= {"BlogPublished", "BlogUpdated", "BlogDeleted"}
    assert envelope["properties"]["payload"]["discriminator"]["propertyName"] == "event_type"


def test_check_detects_stale_and_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schemas.main(["--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(schemas.expected_files())
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 0

    (tmp_path / "BlogPublished.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "BlogDeleted.json").unlink()
    capsys.readouterr()
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "BlogPublished.json" in err
    assert "BlogDeleted.json" in err
    assert "make schemas" in err

    assert schemas.write_schemas(tmp_path) == ["BlogPublished.json", "BlogDeleted.json"]
    assert schemas.stale_schemas(tmp_path) == []
