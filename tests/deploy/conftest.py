"""Fixtures of the offline Kubernetes checks: the pinned helm and the vendored CRDs. Either
missing FAILS under CI (CI=true, set by .ci/run) and skips elsewhere, saying what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy.k8s_check import CRDS_ENV, HELM, crds_dir


def unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    if not HELM.exists():
        unavailable(f"{HELM} is missing: `make helm` builds the pinned helm")
    return HELM


@pytest.fixture(scope="session")
def crds() -> Path:
    directory = crds_dir()
    if not directory.is_dir():
        unavailable(
            f"the vendored CRDs are missing at {directory}: set {CRDS_ENV} to the folder with"
            " the Strimzi/ECK/CNPG/KEDA/prometheus-operator CRDs (default ../shared/k8s-crds)"
        )
    return directory
