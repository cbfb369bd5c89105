"""How busy a service process was during a bench run, and (with `--profile`) where its CPU went.

`cpu_share` is always measured: CPU seconds per wall second from /proc (1.0 = one core busy,
the ceiling of one Python process). Near 1.0 the service is CPU-bound and the profile says on
what; well below 1.0 it is waiting (on PostgreSQL, Elasticsearch, Kafka or a busy machine).

With profiling on, py-spy samples the process (on-CPU samples only: idle threads would drown
the picture) into `bench/results/profiles/<label>.txt`, collapsed stacks with the sample count
last (speedscope and flamegraph.pl read it); the report gets the innermost frames (self time),
heaviest first, and the share of samples under chosen frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from bench.common import RESULTS

PROFILES = RESULTS / "profiles"
SAMPLE_RATE_HZ = 200
_native_frames = False


def sample_native_frames() -> None:
    """Profiles from now on include native frames (`--profile-native`)."""
    global _native_frames
    _native_frames = True


def py_spy() -> str | None:
    beside_python = Path(sys.executable).with_name("py-spy")
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


def top_self(collapsed: str, limit: int = 12) -> list[tuple[str, float]]:
    """(frame, share of samples) of the innermost frames, heaviest first."""
    samples: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        innermost = stack.rsplit(";", 1)[-1]
        samples[innermost] += int(count)
        total += int(count)
    return (
        [(frame, round(n / total, 3)) for frame, n in samples.most_common(limit)] if total else []
    )


def top_inclusive(collapsed: str, needles: tuple[str, ...]) -> dict[str, float]:
    """Share of samples whose stack passes through a frame containing each needle."""
    lines = [line.rpartition(" ") for line in collapsed.splitlines()]
    total = sum(int(count) for _, _, count in lines if count.isdigit())
    shares: dict[str, float] = {}
    for needle in needles:
        hit = sum(int(c) for stack, _, c in lines if c.isdigit() and needle in stack)
        shares[needle] = round(hit / total, 3) if total else 0.0
    return shares


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # After "pid (comm)": fields[0] is the state, utime and stime are the 12th and 13th.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_share(
    pid: int | None, report: dict[str, object], *, spawned_at: float | None = None
) -> Iterator[None]:
    """CPU seconds `pid` used during the block, and its share of one core. `spawned_at` (the
    monotonic time of the spawn) counts from the process's start instead: a service that starts
    consuming before it answers its health check has done part of the work by then."""
    before: float | None
    if spawned_at is not None:
        before, started = 0.0, spawned_at
    else:
        before, started = (cpu_seconds(pid) if pid else None), time.monotonic()
    try:
        yield
    finally:
        after = cpu_seconds(pid) if pid else None
        elapsed = time.monotonic() - started
        if before is not None and after is not None and elapsed > 0:
            report["cpu_share"] = round((after - before) / elapsed, 2)
            report["cpu_s"] = round(after - before, 3)


@contextlib.asynccontextmanager
async def sampled(
    pid: int | None,
    label: str,
    enabled: bool,
    needles: tuple[str, ...] = (),
    *,
    spawned_at: float | None = None,
) -> AsyncIterator[dict[str, object]]:
    """Measure (and, if enabled, profile) `pid` during the block; the summary lands in the dict.
    CPU is counted from `spawned_at` when given (see `cpu_share`)."""
    report: dict[str, object] = {}
    binary = py_spy()
    if not enabled or pid is None or binary is None:
        with cpu_share(pid, report, spawned_at=spawned_at):
            yield report
        return
    PROFILES.mkdir(parents=True, exist_ok=True)
    raw = PROFILES / f"{label}.txt"
    # Native frames (C extensions, the interpreter, libc) need py-spy to pause the process for
    # each sample; without them it never pauses it, and C time is charged to the Python caller.
    pausing = ["--native"] if _native_frames else ["--nonblocking"]
    recorder = await asyncio.create_subprocess_exec(
        binary, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE_HZ), *pausing,
        "--format", "raw", "--output", str(raw),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with cpu_share(pid, report, spawned_at=spawned_at):
            yield report
    finally:
        with contextlib.suppress(ProcessLookupError):
            recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            await asyncio.wait_for(recorder.wait(), 30)
        except TimeoutError:
            recorder.kill()
        collapsed = await asyncio.to_thread(_read, raw)
        if collapsed is not None:
            report["profile"] = str(raw.relative_to(RESULTS.parent.parent))
            report["top_self"] = top_self(collapsed)
            report["under"] = top_inclusive(collapsed, needles)


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None
