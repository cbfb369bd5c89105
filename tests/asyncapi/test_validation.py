"""@asyncapi/parser on docs/asyncapi.yaml, judged by its diagnostics: the parser returns error
diagnostics for an invalid document without failing (the node script exits 0 for it too), so the
check reads them. Broken documents (a dangling $ref, an operation without action, a schema type
that does not exist, a binding of the wrong type, a message not in the operation's channel) fail."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = REPO / "docs" / "asyncapi.yaml"
MODULES = REPO / ".tools" / "asyncapi" / "node_modules"
VALIDATOR = REPO / "scripts" / "asyncapi" / "validate.cjs"


@pytest.fixture(scope="module", autouse=True)
def parser_installed() -> None:
    missing = "node is not on PATH" if shutil.which("node") is None else None
    if missing is None and not MODULES.is_dir():
        missing = f"{MODULES} is missing: `make asyncapi-parser` installs @asyncapi/parser"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing, pytrace=False)
        pytest.skip(missing)


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/asyncapi/generate.py", "--document", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def raw_diagnostics(path: Path) -> tuple[int, list[dict[str, Any]]]:
    node = shutil.which("node")
    assert node is not None
    result = subprocess.run(
        [node, str(VALIDATOR), str(MODULES), str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return result.returncode, found


def test_the_committed_document_is_valid() -> None:
    result = check(DOCUMENT)
    assert result.returncode == 0, result.stderr
    assert "valid AsyncAPI 3.0" in result.stdout


def dangling_channel(doc: dict[str, Any]) -> None:
    doc["operations"]["counter.receive"]["channel"] = {"$ref": "#/channels/nowhere"}


def no_action(doc: dict[str, Any]) -> None:
    del doc["operations"]["indexer.receive"]["action"]


def unknown_type(doc: dict[str, Any]) -> None:
    doc["components"]["messages"]["BlogPublished"]["payload"]["type"] = "record"


def partitions_as_text(doc: dict[str, Any]) -> None:
    doc["channels"]["blog-events"]["bindings"]["kafka"]["partitions"] = "six"


def foreign_message(doc: dict[str, Any]) -> None:
    doc["operations"]["counter.receive"]["messages"] = [
        {"$ref": "#/channels/blog-events.counter.dlq/messages/DeadLetter"}
    ]


def broken_copy(tmp_path: Path, breakage: Callable[[dict[str, Any]], None]) -> Path:
    doc = copy.deepcopy(yaml.safe_load(DOCUMENT.read_text(encoding="utf-8")))
    breakage(doc)
    broken = tmp_path / "asyncapi.yaml"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return broken


def test_the_parser_exits_0_on_an_invalid_document(tmp_path: Path) -> None:
    """Why the check reads the diagnostics: the exit status alone proves nothing."""
    exit_code, found = raw_diagnostics(broken_copy(tmp_path, dangling_channel))
    assert exit_code == 0
    assert any(item["severity"] == 0 and item["code"] == "invalid-ref" for item in found), found


@pytest.mark.parametrize(
    "breakage",
    [dangling_channel, no_action, unknown_type, partitions_as_text, foreign_message],
    ids=lambda f: f.__name__,
)
def test_a_broken_document_fails_the_check(
    tmp_path: Path, breakage: Callable[[dict[str, Any]], None]
) -> None:
    result = check(broken_copy(tmp_path, breakage))
    assert result.returncode == 1
    assert "is NOT valid" in result.stderr
    assert "error " in result.stderr
