"""`make new-consumer NAME=tagtrends`: a new consumer group service from templates/consumer/.

Renders services/<name>/ (settings with prefix <NAME>_, a handler on the shared consumer keeping
live blogs per tag in its own PostgreSQL schema, an app with /healthz /readyz /metrics,
migrations, unit/integration/chart tests, Dockerfile, Helm chart, topics.yaml with the group's
dead-letter topic `blog-events.<name>.dlq`), registers it in the uv workspace (root
pyproject.toml: dependency, source, mypy path; `uv lock`), formats it with the repo's ruff and
regenerates what derives from the topics files (deploy/k8s's KafkaTopics, docs/asyncapi.yaml).

Plain substitution, no template engine: `@@name@@`, `@@NAME@@` and `@@port@@` in file contents
and paths; a `.tmpl` suffix (kept on Python and pyproject files so the repo's linters and uv
ignore the template) is dropped. `--render-only DIR` renders the service into DIR and touches
nothing else (the check that the template stays valid uses it).
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = Path("templates/consumer")
TOKEN = re.compile(r"@@(name|NAME|port)@@")
# A lowercase identifier without `_`: the same string is the Python package, the PostgreSQL
# schema, the consumer group, the Kafka topic part, the Helm chart and Kubernetes names (DNS
# labels refuse `_`).
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]{1,15}")
FIRST_PORT = 8004  # publisher, counter, indexer and lagmon use 8000-8003
# Names an unquoted PostgreSQL schema or the platform's own folders cannot take.
RESERVED = {
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "both",
    "case", "cast", "check", "collate", "column", "constraint", "create", "default",
    "deferrable", "desc", "distinct", "do", "else", "end", "except", "false", "fetch", "for",
    "foreign", "from", "grant", "group", "having", "in", "initially", "intersect", "into",
    "lateral", "leading", "limit", "localtime", "not", "null", "offset", "on", "only", "or",
    "order", "placing", "primary", "public", "references", "returning", "select", "some",
    "symmetric", "table", "then", "to", "trailing", "true", "union", "unique", "user", "using",
    "variadic", "when", "where", "window", "with",
    "libs", "services", "templates", "tests", "scripts", "deploy", "bench", "docs",
}  # fmt: skip


class GenerationError(Exception):
    """Bad input or a repository the generator cannot register the service in."""


def validate_name(name: str, repo: Path) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise GenerationError(
            f"NAME={name!r}: use 2-16 lowercase letters and digits, starting with a letter "
            "(it is the Python package, PostgreSQL schema, consumer group and Kubernetes name)"
        )
    if keyword.iskeyword(name) or name in sys.stdlib_module_names or name in RESERVED:
        raise GenerationError(f"NAME={name!r} is reserved (Python, PostgreSQL or the repo)")
    if (repo / "services" / name).exists():
        raise GenerationError(f"services/{name} exists already")
    if importlib.util.find_spec(name) is not None:
        raise GenerationError(f"NAME={name!r} would shadow the installed module {name!r}")


def next_port(repo: Path) -> int:
    """One above the highest default port of the services' settings."""
    ports = [FIRST_PORT - 1]
    for settings in repo.glob("services/*/src/*/settings.py"):
        found = re.search(r"port: int = Field\(default=(\d+)", settings.read_text(encoding="utf-8"))
        if found:
            ports.append(int(found.group(1)))
    return max(ports) + 1


def substitute(text: str, values: dict[str, str]) -> str:
    return TOKEN.sub(lambda match: values[match.group(1)], text)


def render(repo: Path, target: Path, name: str, port: int) -> list[Path]:
    """Every template file into `target` (the service folder); returns the files written."""
    values = {"name": name, "NAME": name.upper(), "port": str(port)}
    source = repo / TEMPLATE
    if not source.is_dir():
        raise GenerationError(f"{source} is missing")
    written = []
    for path in sorted(source.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        relative = substitute(path.relative_to(source).as_posix(), values).removesuffix(".tmpl")
        out = target / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        text = substitute(path.read_text(encoding="utf-8"), values)
        if "@@" in text:
            raise GenerationError(f"{path}: a placeholder is left after substitution")
        out.write_text(text, encoding="utf-8")
        written.append(out)
    return written


def insert_after(text: str, anchor: str, line: str, where: str) -> str:
    """Add `line` after the line matching `anchor` (a regex), once."""
    if line.strip() in text:
        return text
    match = re.search(anchor, text, flags=re.MULTILINE)
    if match is None:
        raise GenerationError(f"pyproject.toml: cannot find {where} to register the service")
    end = text.index("\n", match.end()) + 1
    return text[:end] + line + "\n" + text[end:]


def register(repo: Path, name: str) -> None:
    """Root pyproject.toml: a dependency of the workspace root, a workspace source, and its src
    folder on mypy's path (the members glob `services/*` already includes it)."""
    path = repo / "pyproject.toml"
    text = path.read_text(encoding="utf-8")
    text = insert_after(text, r'^    "lagmon",$', f'    "{name}",', "the dependencies list")
    text = insert_after(
        text, r"^lagmon = \{ workspace = true \}$", f"{name} = {{ workspace = true }}", "sources"
    )
    mypy_path = re.search(r'^mypy_path = "([^"]*)"$', text, flags=re.MULTILINE)
    if mypy_path is None:
        raise GenerationError("pyproject.toml: no mypy_path line")
    entry = f"services/{name}/src"
    if entry not in mypy_path.group(1).split(":"):
        start, end = mypy_path.span(1)
        text = text[:start] + mypy_path.group(1) + ":" + entry + text[end:]
    path.write_text(text, encoding="utf-8")


def run(repo: Path, *command: str) -> None:
    # The commands are this script's own (the repo's tools on fixed arguments), no user input.
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise GenerationError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def tool(repo: Path, name: str) -> str:
    """The repo's pinned tool (uv in .tools, the rest in .venv), else the one on PATH."""
    for candidate in (repo / ".tools" / "bin" / name, Path(sys.executable).parent / name):
        if candidate.exists():
            return str(candidate)
    return name


def generate(repo: Path, name: str, port: int | None) -> Path:
    validate_name(name, repo)
    target = repo / "services" / name
    render(repo, target, name, port or next_port(repo))
    register(repo, name)
    ruff = tool(repo, "ruff")
    # Import order depends on the name (first-party packages sort alphabetically): let ruff
    # sort and format rather than the template guess.
    run(repo, ruff, "format", "--quiet", str(target))
    run(repo, ruff, "check", "--fix", "--quiet", str(target))
    run(repo, ruff, "format", "--quiet", str(target))
    run(repo, tool(repo, "uv"), "lock", "--quiet")
    run(repo, sys.executable, "deploy/k8s/generate.py")
    # The new group's receive operation and DLQ channel in the AsyncAPI document.
    run(repo, sys.executable, "scripts/asyncapi/generate.py")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make new-consumer", description=__doc__.split("\n")[0])
    parser.add_argument("name", help="the new service's name (lowercase letters and digits)")
    parser.add_argument("--port", type=int, help="its default HTTP port (default: next free)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the repository root")
    parser.add_argument(
        "--render-only",
        type=Path,
        metavar="DIR",
        help="only render the service's files into DIR (no registration, no lock)",
    )
    args = parser.parse_args(argv)
    try:
        if args.render_only is not None:
            validate_name(args.name, args.repo)
            render(args.repo, args.render_only, args.name, args.port or next_port(args.repo))
            print(f"rendered {args.name} into {args.render_only}")
            return 0
        target = generate(args.repo.resolve(), args.name, args.port)
    except GenerationError as exc:
        print(f"new-consumer: {exc}", file=sys.stderr)
        return 2
    relative = target.relative_to(args.repo.resolve())
    print(
        f"created {relative} (consumer group {args.name}, schema {args.name}, "
        f"settings {args.name.upper()}_*, DLQ blog-events.{args.name}.dlq)\n"
        f"next: make install && make topics && make lint && "
        f".venv/bin/pytest {relative} -q\n"
        f"run:  {args.name.upper()}_DATABASE_URL=... .venv/bin/python -m {args.name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
