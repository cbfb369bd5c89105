"""`python -m lagmon status`: the lag table in a terminal (or as JSON).

Without `--server` it samples Kafka itself: twice, `--interval` seconds apart, so the status
rules have two observations (enough for STOP: lag and no member in both samples; STALL after
`--interval`; WARN, REWIND). With `--server URL` it prints what a running `python -m lagmon serve`
sees, with its full window of history."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from lagmon.app import build_sampler
from lagmon.sampler import Sampler
from lagmon.settings import Settings

CLEAR_SCREEN = "\x1b[H\x1b[2J"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    parser.add_argument(
        "--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C"
    )
    parser.add_argument("--server", metavar="URL", help="read a running lagmon server's /api/lag")
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="seconds between the two samples of a one-shot local status (default 2)",
    )
    parser.add_argument(
        "--partitions", action="store_true", help="also print one row per partition"
    )
    parser.add_argument("--group", action="append", help="only these groups (repeatable)")


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def render(snapshot: dict[str, Any], *, partitions: bool) -> str:
    taken = _when(snapshot["at"])
    lines = [f"topics: {', '.join(snapshot['topics'])}   sampled: {taken}"]
    if snapshot.get("error"):
        last_success = snapshot.get("last_success_at")
        since = "never" if last_success is None else _when(last_success)
        lines.append(f"LAST SAMPLE FAILED: {snapshot['error']} (last successful sample: {since})")
    groups = snapshot["groups"]
    if not groups:
        lines.append("no consumer group has committed offsets on these topics")
        return "\n".join(lines)
    rows = [["GROUP", "STATUS", "STATE", "MEMBERS", "LAG", "LAG-SECONDS", "WHY"]]
    rows += [
        [g["group"], g["status"], g["state"], _count(g["members"]), _count(g["lag"]),
         _seconds(g["lag_seconds"]), g["reason"]]
        for g in groups
    ]  # fmt: skip
    lines.append(format_table(rows))
    if partitions:
        rows = [["GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG-SECONDS",
                 "STATUS", "WHY"]]  # fmt: skip
        for g in groups:
            for p in g["partitions"]:
                committed = p["committed_offset"]
                rows.append(
                    [g["group"], p["topic"], str(p["partition"]),
                     "-" if committed is None else str(committed), str(p["log_end_offset"]),
                     str(p["lag"]), _seconds(p["lag_seconds"]), p["status"], p["reason"]]
                )  # fmt: skip
        lines += ["", format_table(rows)]
    return "\n".join(lines)


def one_shot_settings(settings: Settings, interval_s: float) -> Settings:
    """Two observations `interval_s` apart must be enough to judge: lag and no member in both is
    STOP, a committed offset that did not move between them while lag > 0 is STALL, a lag that
    grew is WARN."""
    stall_after_s = min(interval_s, settings.window_s)
    return settings.model_copy(
        update={"min_observations": 2, "stall_after_s": stall_after_s, "stop_after_samples": 2}
    )


def _only(snapshot: dict[str, Any], groups: list[str] | None) -> dict[str, Any]:
    if groups:
        snapshot = {**snapshot, "groups": [g for g in snapshot["groups"] if g["group"] in groups]}
    return snapshot


async def _from_server(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(f"{url.rstrip('/')}/api/lag")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def run_status(args: argparse.Namespace, settings: Settings | None) -> int:
    sampler: Sampler | None = None
    client: httpx.AsyncClient | None = None
    try:
        if args.server:
            client = httpx.AsyncClient(timeout=10.0)
        else:
            assert settings is not None
            # --watch accumulates a real window; a one-shot status has two samples only.
            effective = settings if args.watch else one_shot_settings(settings, args.interval)
            sampler = build_sampler(effective)
            await sampler.sample_once()
            await asyncio.sleep(args.interval)
        while True:
            if client is not None:
                snapshot = await _from_server(client, args.server)
            else:
                assert sampler is not None
                snapshot = (await sampler.sample_once()).to_json()
            snapshot = _only(snapshot, args.group)
            if args.json:
                output = json.dumps(snapshot, indent=2)
            else:
                output = render(snapshot, partitions=args.partitions)
            if args.watch:
                output = CLEAR_SCREEN + output
            print(output, flush=True)
            if not args.watch:
                failed = bool(snapshot.get("error"))
                return 1 if failed else 0
            await asyncio.sleep(args.watch)
    finally:
        if sampler is not None:
            await sampler.close()
        if client is not None:
            await client.aclose()


def status_main(args: argparse.Namespace, settings: Settings | None) -> int:
    try:
        return asyncio.run(run_status(args, settings))
    except KeyboardInterrupt:
        return 0
    except httpx.HTTPError as exc:
        print(f"lagmon: cannot read {args.server}: {exc}", file=sys.stderr)
        return 1
