"""Migrations file discovery and logging setup (no database needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service_kit.logs import configure_logging
from service_kit.migrations import advisory_lock_key, migration_files


def test_migration_files_are_ordered_by_number_and_filtered(tmp_path: Path) -> None:
    for name in ["010_later.sql", "002_second.sql", "001_first.sql", "README.md", "003_x.txt"]:
        (tmp_path / name).write_text("SELECT 1;")
    assert [p.name for p in migration_files(tmp_path)] == [
        "001_first.sql",
        "002_second.sql",
        "010_later.sql",
    ]


def test_duplicate_migration_numbers_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="duplicate"):
        migration_files(tmp_path)


def test_advisory_lock_key_is_stable_and_per_schema() -> None:
    assert advisory_lock_key("counter") == advisory_lock_key("counter")
    assert advisory_lock_key("counter") != advisory_lock_key("publisher")
    assert -(2**63) <= advisory_lock_key("counter") < 2**63


def test_configure_logging_is_idempotent_and_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure_logging("debug")
        configure_logging("INFO")
        assert len(root.handlers) == 1
        assert root.level == logging.INFO
        logging.getLogger("svc.test").info("hello %s", "world")
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "INFO  svc.test: hello world" in err
        with pytest.raises(ValueError, match="unknown log level"):
            configure_logging("loud")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
