"""Offline validation of the Kubernetes artefacts: the teams' Helm charts rendered with their
default and production values, and the platform manifests of deploy/k8s/platform.

- Core objects (Deployment, Service, ...) are validated with `kubernetes-validate`'s bundled
  schemas of Kubernetes KUBERNETES_VERSION, in strict mode (an unknown field is an error).
- Custom resources are validated against the `openAPIV3Schema` of their CRD, read from the
  folder K8S_CRDS_DIR (default `../shared/k8s-crds` beside the checkout), made strict first: the
  API server prunes fields a structural schema does not declare (silently dropping that piece of
  configuration), so here an undeclared field is an error, except where the schema says
  `x-kubernetes-preserve-unknown-fields` or declares `additionalProperties`.

`python -m tests.deploy.k8s_check` renders and validates everything and prints the object counts
(`make lint-k8s` runs it); the tests in tests/deploy use the same functions.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".tools" / "bin" / "helm"
# The Kubernetes version the charts are rendered for (`helm template --kube-version`) and whose
# schemas validate them: bundled by kubernetes-validate; the charts need >= 1.30.
KUBERNETES_VERSION = "1.34.0"
CHARTS = ("publisher", "counter", "indexer", "lagmon")
VALUES_SETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "production": ("values-production.yaml",),
}
NAMESPACES = {name: f"blog-{name}" for name in CHARTS}
PLATFORM_DIR = REPO / "deploy" / "k8s" / "platform"
CRDS_ENV = "K8S_CRDS_DIR"

# Custom resources whose CRD is not among the vendored ones: checked against a schema written
# here from the operator's documentation (a field check, not the CRD's own schema).
HAND_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["parameter", "name", "key"],
                            "properties": {
                                "parameter": {"type": "string", "minLength": 1},
                                "name": {"type": "string", "minLength": 1},
                                "key": {"type": "string", "minLength": 1},
                            },
                        },
                    },
                },
            },
        },
    },
}


UNCHECKED = "NOT CHECKED (no CRD folder)"


class CrdsMissingError(RuntimeError):
    pass


def crds_dir() -> Path:
    return Path(os.environ.get(CRDS_ENV) or REPO.parent / "shared" / "k8s-crds").resolve()


def yaml_loader() -> type[yaml.SafeLoader]:
    # The C loader when PyYAML has it: the ECK CRD alone is 1.5 MB.
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_documents(text: str) -> list[dict[str, Any]]:
    documents = yaml.load_all(text, Loader=yaml_loader())
    # Plain JSON types, as the API server sees them.
    return [json.loads(json.dumps(doc, default=str)) for doc in documents if doc]


# -- CRD schemas -------------------------------------------------------------------------------


def strict_schema(schema: dict[str, Any], *, root: bool = True) -> dict[str, Any]:
    """The CRD schema with the API server's structural rules made checkable by jsonschema:
    undeclared fields rejected (pruned by the server), `nullable` and `x-kubernetes-int-or-string`
    honoured. `metadata` at the root is the server's ObjectMeta, left open."""
    result = copy.copy(schema)
    if result.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if result.get("nullable") and isinstance(result.get("type"), str):
        result["type"] = [result["type"], "null"]
    if "properties" in result:
        result["properties"] = {
            name: (sub if root and name == "metadata" else strict_schema(sub, root=False))
            for name, sub in result["properties"].items()
        }
    if isinstance(result.get("additionalProperties"), dict):
        result["additionalProperties"] = strict_schema(result["additionalProperties"], root=False)
    if isinstance(result.get("items"), dict):
        result["items"] = strict_schema(result["items"], root=False)
    for keyword in ("allOf", "anyOf", "oneOf"):
        if keyword in result and keyword in schema:
            result[keyword] = [strict_schema(sub, root=False) for sub in result[keyword]]
    is_object = result.get("type") == "object" or (
        isinstance(result.get("type"), list) and "object" in result["type"]
    )
    open_object = (
        result.get("x-kubernetes-preserve-unknown-fields")
        or "additionalProperties" in result
        or result.get("x-kubernetes-embedded-resource")
    )
    if is_object and not open_object:
        result["additionalProperties"] = False
    return result


@dataclass(frozen=True)
class CrdSchema:
    source: str  # the CRD file's name
    schema: dict[str, Any]


@cache
def crd_schemas(directory: Path) -> dict[tuple[str, str], CrdSchema]:
    """(apiVersion, kind) -> the strict schema of every served version of every CRD there."""
    if not directory.is_dir():
        raise CrdsMissingError(
            f"no CRD folder at {directory} (set {CRDS_ENV}, default ../shared/k8s-crds)"
        )
    schemas: dict[tuple[str, str], CrdSchema] = {}
    for path in sorted(directory.glob("*.yaml")):
        for crd in load_documents(path.read_text(encoding="utf-8")):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served"):
                    continue
                raw = version["schema"]["openAPIV3Schema"]
                schemas[(f"{group}/{version['name']}", kind)] = CrdSchema(
                    path.name, strict_schema(raw)
                )
    if not schemas:
        raise CrdsMissingError(f"no CustomResourceDefinition in {directory}")
    return schemas


# -- validation ----------------------------------------------------------------------------------


@dataclass
class Checked:
    """One object's validation: against what, and the errors (empty: valid)."""

    source: str  # chart/values or manifest file
    kind: str
    name: str
    against: str
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def object_id(obj: dict[str, Any]) -> tuple[str, str]:
    return str(obj.get("kind")), str(obj.get("metadata", {}).get("name"))


def error_text(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(part) for part in error.absolute_path) or "(root)"
    return f"{where}: {error.message[:300]}"


def validate_object(obj: dict[str, Any], source: str, crds: Path | None) -> Checked:
    """Validate one object: a custom resource against its CRD (or hand schema), anything else
    against the Kubernetes schemas. `crds` None: custom resources are reported as unchecked."""
    kind, name = object_id(obj)
    api_version = str(obj.get("apiVersion"))
    key = (api_version, kind)
    if key in HAND_SCHEMAS:
        validator = jsonschema.Draft4Validator(HAND_SCHEMAS[key])
        errors = [error_text(e) for e in validator.iter_errors(obj)]
        return Checked(source, kind, name, "hand-written schema (no vendored CRD)", errors)
    schemas = crd_schemas(crds) if crds is not None else {}
    if key in schemas:
        crd = schemas[key]
        validator = jsonschema.Draft4Validator(crd.schema)
        errors = [error_text(e) for e in validator.iter_errors(obj)]
        return Checked(source, kind, name, f"CRD {crd.source}", errors)
    if "." in api_version.split("/")[0] and not api_version.split("/")[0].endswith(".k8s.io"):
        if crds is None:
            return Checked(source, kind, name, UNCHECKED)
        # A custom resource whose CRD we do not have: an error, nothing goes unchecked.
        return Checked(source, kind, name, "no CRD", [f"no CRD for {api_version} {kind}"])
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return Checked(source, kind, name, f"Kubernetes {KUBERNETES_VERSION}", [error_text(exc)])
    except kubernetes_validate.SchemaNotFoundError as exc:
        return Checked(source, kind, name, "unchecked", [exc.message])
    return Checked(source, kind, name, f"Kubernetes {KUBERNETES_VERSION}")


def validate_all(
    objects: Iterable[dict[str, Any]], source: str, crds: Path | None
) -> list[Checked]:
    return [validate_object(obj, source, crds) for obj in objects]


# -- rendering -----------------------------------------------------------------------------------


class HelmError(RuntimeError):
    pass


def chart_dir(chart: str) -> Path:
    return REPO / "services" / chart / "chart"


def helm(*args: str) -> str:
    if not HELM.exists():
        raise HelmError(f"{HELM} is missing: run `make helm`")
    result = subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if result.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed:\n{result.stderr.strip()}")
    return result.stdout


def values_args(chart: str, values_set: str) -> list[str]:
    return [arg for name in VALUES_SETS[values_set] for arg in ("-f", str(chart_dir(chart) / name))]


def render_chart(
    chart: str,
    values_set: str = "default",
    set_values: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """`helm template` of the chart (hooks included), as plain objects."""
    args = [
        "template",
        chart,
        str(chart_dir(chart)),
        "--namespace",
        NAMESPACES[chart],
        "--kube-version",
        KUBERNETES_VERSION,
        *values_args(chart, values_set),
    ]
    for value in set_values:
        args += ["--set", value]
    return load_documents(helm(*args, *extra))


def lint_chart(chart: str, values_set: str = "default") -> str:
    return helm(
        "lint",
        "--strict",
        str(chart_dir(chart)),
        "--namespace",
        NAMESPACES[chart],
        "--kube-version",
        KUBERNETES_VERSION,
        *values_args(chart, values_set),
    )


def platform_manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: load_documents(path.read_text(encoding="utf-8"))
        for path in sorted(PLATFORM_DIR.glob("*.yaml"))
    }


# -- report --------------------------------------------------------------------------------------


def kinds_summary(objects: Iterable[dict[str, Any]]) -> str:
    counts = Counter(str(obj["kind"]) for obj in objects)
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))


def run(crds: Path | None) -> Iterator[tuple[str, list[dict[str, Any]], list[Checked]]]:
    for chart in CHARTS:
        for values_set in VALUES_SETS:
            lint_chart(chart, values_set)
            objects = render_chart(chart, values_set)
            label = f"{chart} ({values_set} values)"
            yield label, objects, validate_all(objects, label, crds)
    for name, objects in platform_manifests().items():
        label = f"deploy/k8s/platform/{name}"
        yield label, objects, validate_all(objects, label, crds)


def main() -> int:
    directory = crds_dir()
    crds: Path | None = directory
    if not directory.is_dir():
        if os.environ.get("CI") == "true":
            print(f"FAIL: {CRDS_ENV} folder {directory} is missing", file=sys.stderr)
            return 1
        print(f"WARNING: no CRD folder at {directory}: custom resources are not checked")
        crds = None
    print(
        f"Kubernetes {KUBERNETES_VERSION} schemas (kubernetes-validate "
        f"{kubernetes_validate.version.__version__}, strict); CRDs from {directory}"
    )
    failed = unchecked = total = 0
    for label, objects, checked in run(crds):
        bad = [c for c in checked if not c.ok]
        skipped = [c for c in checked if c.against == UNCHECKED]
        total += len(checked)
        failed += len(bad)
        unchecked += len(skipped)
        status = "ok" if not bad else f"{len(bad)} INVALID"
        if skipped:
            status += f", {len(skipped)} custom resources NOT CHECKED"
        print(f"{label}: {len(objects)} objects ({kinds_summary(objects)}): {status}")
        for c in bad:
            for error in c.errors:
                print(f"    {c.kind}/{c.name} [{c.against}]: {error}")
    print(f"{total - failed - unchecked} of {total} objects valid, {unchecked} not checked")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
