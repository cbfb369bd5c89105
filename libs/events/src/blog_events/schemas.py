"""Generate or check the committed JSON Schemas of the event contract.

    python -m blog_events.schemas          # (re)write libs/events/schemas/*.json
    python -m blog_events.schemas --check  # exit 1 if a file on disk differs from the models

The files are deterministic (sorted keys, two-space indent, trailing newline) so that a model
change shows up as a reviewable diff, and CI fails when someone changes a model without
regenerating them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from blog_events.models import BlogDeleted, BlogPublished, BlogUpdated, Envelope

# src/blog_events/schemas.py -> libs/events/schemas
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"

MODELS: tuple[type[BaseModel], ...] = (Envelope, BlogPublished, BlogUpdated, BlogDeleted)

REGENERATE_HINT = "run `make schemas` (python -m blog_events.schemas) and commit the result"


def render_schema(model: type[BaseModel]) -> str:
    """The schema text of one model, exactly as it is stored on disk."""
    # "validation" mode: the schema describes what consumers accept.
    schema = model.model_json_schema(mode="validation")
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    """File name -> content for every event schema."""
    return {f"{model.__name__}.json": render_schema(model) for model in MODELS}


def write_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    """Write every schema file; returns the names of the files whose content changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, content in expected_files().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            changed.append(name)
    return changed


def stale_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing on disk or differ from the models."""
    return [
        name
        for name, content in expected_files().items()
        if not (directory / name).exists()
        or (directory / name).read_text(encoding="utf-8") != content
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blog_events.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only verify; exit 1 when stale")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="schema directory")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_schemas(args.dir)
        if stale:
            print(
                f"JSON Schemas out of date in {args.dir}: {', '.join(stale)}; {REGENERATE_HINT}",
                file=sys.stderr,
            )
            return 1
        print(f"JSON Schemas up to date in {args.dir}")
        return 0
    changed = write_schemas(args.dir)
    print(f"wrote {len(changed)} schema file(s) to {args.dir}: {', '.join(changed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
