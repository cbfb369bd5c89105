"""How long each service's own graceful stop may take, read from its code rather than copied.

On SIGTERM a service (service_kit.serving.run_http_service) first lets uvicorn drain the requests
in flight for up to `graceful_timeout_s`, then runs the lifespan shutdown: a consumer group's
`consuming(...)` block waits up to `stop_timeout_s` for the batch in hand to finish and commit
(service_kit.background), the publisher waits for its relay with `asyncio.wait_for`. The budget is
the sum of those timeouts; closing the clients afterwards is quick and left to a margin."""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic_settings import BaseSettings

from service_kit.background import consuming
from service_kit.serving import run_http_service


@dataclass(frozen=True)
class Step:
    what: str
    seconds: float


@dataclass(frozen=True)
class StopBudget:
    service: str
    steps: tuple[Step, ...]

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)

    def explain(self) -> str:
        parts = " + ".join(f"{step.what} {step.seconds:g} s" for step in self.steps)
        return f"{self.service}: {parts} = {self.seconds:g} s"


class UnreadableTimeout(LookupError):
    """A timeout given in a form this reader cannot evaluate: name it (a constant or a setting)."""


def _default_of(function: Any, parameter: str) -> float:
    default = inspect.signature(function).parameters[parameter].default
    if default is inspect.Parameter.empty:
        raise UnreadableTimeout(f"{function.__qualname__}({parameter}) has no default")
    return float(default)


def _value(node: ast.expr, module: ModuleType, settings: type[BaseSettings], where: str) -> float:
    """A literal, a module-level name, or `settings.<field>` (the field's default)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name) and hasattr(module, node.id):
        return float(getattr(module, node.id))
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "settings"
        and node.attr in settings.model_fields
    ):
        return float(settings.model_fields[node.attr].default)
    raise UnreadableTimeout(f"{where}: cannot evaluate {ast.unparse(node)!r}")


def _argument(call: ast.Call, position: int | None, keyword: str) -> ast.expr | None:
    """The argument given by keyword, or at `position` (None: keyword-only)."""
    for item in call.keywords:
        if item.arg == keyword:
            return item.value
    if position is not None and len(call.args) > position:
        return call.args[position]
    return None


def _called_name(call: ast.Call) -> str:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return ""


def _calls(tree: ast.AST, name: str) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called_name(node) == name:
            yield node


def _source(module: ModuleType) -> tuple[ast.Module, str]:
    path = Path(inspect.getfile(module))
    return ast.parse(path.read_text()), path.name


def http_drain(package: str, settings: type[BaseSettings]) -> Step:
    """uvicorn's `timeout_graceful_shutdown`: what `__main__` passes to run_http_service."""
    module = importlib.import_module(f"{package}.__main__")
    tree, filename = _source(module)
    calls = list(_calls(tree, run_http_service.__name__))
    if len(calls) != 1:
        raise UnreadableTimeout(f"{package}/{filename}: expected one run_http_service call")
    node = _argument(calls[0], 3, "graceful_timeout_s")
    where = f"{package}/{filename}:{calls[0].lineno}"
    seconds = (
        _default_of(run_http_service, "graceful_timeout_s")
        if node is None
        else _value(node, module, settings, where)
    )
    return Step("uvicorn drain", seconds)


def lifespan_stops(package: str, settings: type[BaseSettings]) -> list[Step]:
    """The waits of the app's lifespan shutdown: each `consuming(...)` block's stop timeout and
    each `wait_for(..., timeout)` in a `finally:` of the lifespan."""
    module = importlib.import_module(f"{package}.app")
    tree, filename = _source(module)
    lifespans = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and node.name == "lifespan"
    ]
    if len(lifespans) != 1:
        raise UnreadableTimeout(f"{package}/{filename}: expected one lifespan function")
    steps: list[Step] = []
    for call in _calls(lifespans[0], consuming.__name__):
        node = _argument(call, None, "stop_timeout_s")
        where = f"{package}/{filename}:{call.lineno}"
        seconds = (
            _default_of(consuming, "stop_timeout_s")
            if node is None
            else _value(node, module, settings, where)
        )
        steps.append(Step("consumer stop", seconds))
    for block in ast.walk(lifespans[0]):
        if not isinstance(block, ast.Try):
            continue
        for statement in block.finalbody:
            for call in _calls(statement, "wait_for"):
                node = _argument(call, 1, "timeout")
                where = f"{package}/{filename}:{call.lineno}"
                if node is None:
                    raise UnreadableTimeout(f"{where}: wait_for without a timeout")
                awaited = ast.unparse(call.args[0]) if call.args else "?"
                seconds = _value(node, module, settings, where)
                steps.append(Step(f"wait_for({awaited})", seconds))
    return steps


def stop_budget(package: str, settings: type[BaseSettings]) -> StopBudget:
    return StopBudget(package, (http_drain(package, settings), *lifespan_stops(package, settings)))
