"""docker-compose.yml as Docker Compose reads it, offline: `${VAR}` substitution with the Compose
Specification's rules, profiles and `--scale`, durations, and the `docker compose ... up` commands
the README documents (each one is a mode the checks run against)."""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
README = REPO_ROOT / "README.md"

Compose = dict[str, Any]
Service = dict[str, Any]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Longest first: `:-` before `-`.
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    """What `docker compose` refuses to start with: a required variable unset, a bad template."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
    `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}` (nested in defaults too) and `$$` -> `$`.
    An unset variable without a default becomes "" (Compose only warns)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
            continue
        following = text[i + 1 : i + 2]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "{":
            end = _closing_brace(text, i + 2)
            out.append(_braced(text[i + 2 : end], env))
            i = end + 1
        elif match := _NAME.match(text, i + 1):
            out.append(env.get(match.group(), ""))
            i = match.end()
        else:
            raise InterpolationError(f"invalid interpolation in {text!r}: write $$ for a literal $")
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth, i = 1, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InterpolationError(f"unterminated ${{ in {text!r}")


def _braced(inner: str, env: Mapping[str, str]) -> str:
    match = _NAME.match(inner)
    if match is None:
        raise InterpolationError(f"invalid variable name in ${{{inner}}}")
    name, rest = match.group(), inner[match.end() :]
    value = env.get(name)
    if not rest:
        return value or ""
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise InterpolationError(f"invalid interpolation ${{{inner}}}")
    argument = rest[len(operator) :]
    # With a colon the test is "unset or empty", without it only "unset".
    missing = (not value) if operator.startswith(":") else value is None
    if operator in (":-", "-"):
        return interpolate(argument, env) if missing else str(value)
    if operator in (":?", "?"):
        if missing:
            message = interpolate(argument, env)
            raise InterpolationError(f"required variable {name} is missing a value: {message}")
        return str(value)
    return "" if missing else interpolate(argument, env)


def substitute(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value (not the keys), as Compose does after parsing the YAML."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: substitute(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [substitute(item, env) for item in node]
    return node


def read_raw(path: Path = COMPOSE_FILE) -> Compose:
    """The file as parsed YAML (anchors and `<<` merges resolved), before substitution."""
    loaded: Compose = yaml.safe_load(path.read_text())
    return loaded


def load(env: Mapping[str, str], path: Path = COMPOSE_FILE) -> Compose:
    substituted: Compose = substitute(read_raw(path), env)
    return substituted


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_s(text: str) -> float:
    """A Compose duration (Go's syntax: `45s`, `1m30s`, `500ms`) in seconds."""
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"not a Compose duration: {text!r}")
    return total


@dataclass(frozen=True)
class Mode:
    """One way of running the file: its variables, `--profile`s and `--scale`s."""

    command: str
    env: Mapping[str, str]
    profiles: frozenset[str] = frozenset()
    scale: Mapping[str, int] = field(default_factory=dict)

    def enabled(self, compose: Compose) -> dict[str, Service]:
        """The services this mode's profiles enable (a service without profiles always is)."""
        return {
            name: service
            for name, service in compose["services"].items()
            if not service.get("profiles") or self.profiles & set(service["profiles"])
        }

    def running(self, compose: Compose) -> dict[str, Service]:
        """The enabled services that get containers (`--scale name=0` gives none)."""
        return {
            name: service
            for name, service in self.enabled(compose).items()
            if int(self.scale.get(name, service.get("scale", 1))) > 0
        }


def documented_up_commands(readme: Path = README) -> list[str]:
    """Every `docker compose ... up` line of the README's shell blocks (continuations joined)."""
    commands: list[str] = []
    in_shell_block = False
    pending = ""
    for line in readme.read_text().splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            in_shell_block = fence in ("```sh", "```bash", "```shell")
            continue
        if not in_shell_block:
            continue
        code = line.split(" #", 1)[0].rstrip()
        if code.endswith("\\"):
            pending += code[:-1] + " "
            continue
        command, pending = pending + code, ""
        words = command.split()
        if "docker" in words and "compose" in words and "up" in words:
            commands.append(command.strip())
    return commands


def mode_of(command: str, overrides: Mapping[str, str]) -> Mode:
    """The mode a documented command runs: `NAME=value` prefixes, `--profile`, `--scale`.
    `overrides` replace variables (e.g. a password with every awkward character)."""
    words = shlex.split(command)
    env: dict[str, str] = {}
    while words and _NAME.fullmatch(words[0].partition("=")[0]) and "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if words[:2] != ["docker", "compose"]:
        raise ValueError(f"not a docker compose command: {command!r}")
    profiles: set[str] = set()
    scale: dict[str, int] = {}
    for flag, value in itertools.pairwise(words):
        if flag == "--profile":
            profiles.add(value)
        elif flag == "--scale":
            service, _, count = value.partition("=")
            scale[service] = int(count)
    return Mode(command, {**env, **overrides}, frozenset(profiles), scale)


def environment(service: Service) -> dict[str, str]:
    """A service's `environment:` as a mapping, whichever of the two syntaxes it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}
