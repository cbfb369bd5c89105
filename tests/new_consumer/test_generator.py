"""The generator's checks and its output for the example name, without a stack: names refused
with a clear message, nothing left unsubstituted, and the rendered code clean for the repo's ruff
and compilable (the integration test runs the full lint and the service's tests)."""

from __future__ import annotations

import py_compile
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.new_consumer.support import EXAMPLE, REPO, render_example, run_generator


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("counter", "exists already"),
        ("Tag", "lowercase"),
        ("tag_trends", "lowercase letters and digits"),
        ("9tags", "starting with a letter"),
        ("x", "2-16"),
        ("a" * 17, "2-16"),
        ("json", "reserved"),
        ("select", "reserved"),
        ("yaml", "shadow the installed module"),
    ],
)
def test_bad_names_are_refused_and_nothing_is_written(
    tmp_path: Path, name: str, reason: str
) -> None:
    result = run_generator(REPO, name, "--render-only", str(tmp_path / "out"))
    assert result.returncode == 2
    assert reason in result.stderr
    assert not (tmp_path / "out").exists()


def test_make_without_a_name_says_how() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "new-consumer", "-o", "install"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "usage: make new-consumer NAME=" in result.stderr


def test_the_example_renders_a_whole_service(tmp_path: Path) -> None:
    service = render_example(tmp_path / EXAMPLE)
    files = {p.relative_to(service).as_posix() for p in service.rglob("*") if p.is_file()}
    expected = {
        "pyproject.toml",
        "Dockerfile",
        "topics.yaml",
        f"src/{EXAMPLE}/__main__.py",
        f"src/{EXAMPLE}/app.py",
        f"src/{EXAMPLE}/settings.py",
        f"src/{EXAMPLE}/migrations/001_init.sql",
        "tests/test_integration.py",
        "chart/Chart.yaml",
        "chart/templates/deployment.yaml",
    }
    assert expected <= files
    assert not [f for f in files if "@@" in f or f.endswith(".tmpl")]
    for path in service.rglob("*"):
        if path.is_file() and path.suffix != ".pyc":
            text = path.read_text(encoding="utf-8")
            assert "@@" not in text, path
            # Nothing left of the service the template was modelled on.
            assert not re.search(r"\bcounter\b|COUNTER_|total_blogs", text), path
    settings = (service / f"src/{EXAMPLE}/settings.py").read_text(encoding="utf-8")
    assert 'env_prefix="TAGTRENDS_"' in settings
    topics = (service / "topics.yaml").read_text(encoding="utf-8")
    assert f"name: blog-events.{EXAMPLE}.dlq" in topics


def test_the_rendered_python_compiles_and_passes_ruff(tmp_path: Path) -> None:
    service = render_example(tmp_path / EXAMPLE)
    for path in service.rglob("*.py"):
        py_compile.compile(str(path), doraise=True)
    ruff = Path(sys.executable).parent / "ruff"
    # Formatting first, as the generator does: import order depends on the name.
    subprocess.run([ruff, "format", "--quiet", service], check=True, cwd=REPO)
    lint = subprocess.run(
        [ruff, "check", "--fix", service], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert lint.returncode == 0, lint.stdout
