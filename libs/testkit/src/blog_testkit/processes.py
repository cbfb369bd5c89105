"""Services run as real processes (`python -m <module>`), for end-to-end and crash tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import httpx

# Set by the plugin to `<pytest rootdir>/test-artifacts`; the cwd is the fallback outside pytest.
artifacts_dir: Path = Path.cwd() / "test-artifacts"

# Log files are numbered per service name, so restarts and parallel instances never overwrite.
_log_numbers: defaultdict[str, Iterator[int]] = defaultdict(lambda: itertools.count(1))


# Ports handed out by this process. The kernel may return a port again once its probe socket is
# closed: two services given the same port, the second fails to bind while the first answers
# its health check for it (seen once in the bench: an indexer "started" that had exited).
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, never one this process has
    handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class ServiceProcess:
    """One service process. `start()` may be called again after the process has exited
    (e.g. after `kill()`), which starts a new process with a new log file."""

    def __init__(self, name: str, module: str, env: Mapping[str, str], port: int) -> None:
        self.name = name
        self.module = module
        # Every service reads its port from `<MODULE>_PORT` (e.g. COUNTER_PORT).
        self.env = {f"{module.upper()}_PORT": str(port), **env}
        self.port = port
        self.log_path: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    async def start(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109 - the testkit interface
        """Spawn the process and wait until `GET /healthz` answers 200."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._open_new_log()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            env={**os.environ, **self.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if not self.running:  # died during startup: no point waiting any longer
                    self._close_log()
                    raise AssertionError(
                        f"{self.name} exited with code {self.returncode} during startup; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/healthz")).status_code == httpx.codes.OK:
                        return
                if loop.time() >= deadline:
                    self.kill()
                    await self.wait_exit(10)
                    raise AssertionError(
                        f"{self.name}: GET /healthz did not answer 200 within {timeout:g}s; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (the crash the design must survive)."""
        if self.running:
            assert self._process is not None
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def terminate(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109 - the testkit interface
        """SIGTERM and wait for a graceful exit (SIGKILL if it does not come in time)."""
        if self.running:
            assert self._process is not None
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)
        try:
            return await self.wait_exit(timeout)
        except TimeoutError:
            self.kill()
            await self.wait_exit(10)
            raise AssertionError(
                f"{self.name} did not exit within {timeout:g}s of SIGTERM; log {self.log_path}"
            ) from None

    async def wait_exit(self, timeout: float) -> int:  # noqa: ASYNC109 - the testkit interface
        """The process's return code once it has exited (TimeoutError if not within timeout)."""
        if self._process is None:
            raise RuntimeError(f"{self.name} was never started")
        returncode = await asyncio.wait_for(self._process.wait(), timeout)
        self._close_log()
        return returncode

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _open_new_log(self) -> None:
        self._close_log()
        artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = artifacts_dir / f"{self.name}-{next(_log_numbers[self.name])}.log"
        self._log_file = self.log_path.open("wb")

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __repr__(self) -> str:
        return f"ServiceProcess({self.name!r}, {self.module!r}, port={self.port}, pid={self.pid})"
