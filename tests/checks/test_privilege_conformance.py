"""Pod Security Standards parity: every public Pod Security Admission fixture, at its level and version.

The fixtures (``../shared/conformance/psa/testdata``, 4,537 pods from kubernetes/pod-security-admission)
say, per level and policy version, which pods PSA allows (``pass/``) and denies (``fail/``).
Each is judged twice: by the pure ``privilege.evaluate`` and end to end through the admission
pipeline with the namespace labelled ``pod-security.kubernetes.io/enforce=<level>`` and
``enforce-version=<version>``. The newest version is judged again as ``latest``. No case is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook.checks import privilege
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.pss import registry
from webhook.checks.services import Services
from webhook.config import Config
from webhook.core import workloads
from webhook.core.deadline import Deadline

TESTDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "psa" / "testdata"
FIXTURES = sorted(TESTDATA.glob("*/v1.*/*/*.yaml"))
NEWEST = max(int(p.name.removeprefix("v1.")) for p in TESTDATA.glob("*/v1.*"))
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A fail fixture is named after the check it trips; at restricted, some baseline checks are
# replaced by the restricted check that overrides them (as in PSA's registry).
_OVERRIDDEN_BY = {
    "capabilities_baseline": "capabilities_restricted",
    "hostpathvolumes": "restrictedvolumes",
    "procmount": "procmount_restricted",
    "seccompprofile_baseline": "seccompprofile_restricted",
}


def _case_id(path: Path) -> str:
    return "/".join(path.parts[-4:]).removesuffix(".yaml")


@cache
def _load(path: Path) -> Mapping[str, Any]:
    loaded: Mapping[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    return loaded


def _versions(path: Path) -> list[str]:
    version = path.parts[-3]
    return [version, "latest"] if version == f"v1.{NEWEST}" else [version]


class _Labels:
    """Namespace labels from the namespace name "<level>.<version>" (what the API watch gives)."""

    def labels(self, namespace: str) -> Mapping[str, str]:
        level, _, version = namespace.partition(".")
        return {
            "pod-security.kubernetes.io/enforce": level,
            "pod-security.kubernetes.io/enforce-version": version,
        }


def test_the_fixture_set_is_complete() -> None:
    assert len(FIXTURES) == 4537, f"expected 4,537 fixtures under {TESTDATA}"


def test_latest_is_the_newest_fixture_version() -> None:
    assert registry.NEWEST_MINOR == NEWEST
    assert f"v1.{NEWEST}" == privilege.NEWEST_VERSION


@pytest.mark.parametrize("path", FIXTURES, ids=_case_id)
def test_pure_evaluation_agrees_with_pod_security_admission(path: Path) -> None:
    level, expected = path.parts[-4], path.parts[-2]
    pods = workloads.pod_specs(_load(path))
    for version in _versions(path):
        found = privilege.evaluate(pods, level, version, hardened_checks=())
        if expected == "pass":
            assert found == [], f"{level}:{version} must allow this pod, got {[v.describe() for v in found]}"
        else:
            assert found, f"{level}:{version} must deny this pod"
            named = re.sub(r"\d+$", "", path.stem)
            if named != "base":
                ids = {v.check.removeprefix("pss:").lower() for v in found}
                wanted = _OVERRIDDEN_BY.get(named, named) if level == "restricted" and named not in ids else named
                assert wanted in ids, f"expected a {wanted} violation, got {sorted(ids)}"
            assert all(v.path and v.message for v in found)


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    config = Config()
    return Pipeline(config, [privilege.build(config, Services(ci=True))], namespaces=_Labels())


@pytest.mark.parametrize("path", FIXTURES, ids=_case_id)
async def test_admission_pipeline_agrees_with_pod_security_admission(pipeline: Pipeline, path: Path) -> None:
    level, expected = path.parts[-4], path.parts[-2]
    obj = _load(path)
    for version in _versions(path):
        subject = Subject("CREATE", "Pod", f"{level}.{version}", obj["metadata"]["name"], obj)
        outcome = await pipeline.evaluate(subject, Deadline.never())
        assert outcome.verdict.allowed is (expected == "pass"), outcome.verdict.deny_message()
