"""Attacks on ``portcullis check``: manifests that read one way to us and another to kubectl.

kubectl (and everything built on sigs.k8s.io/yaml) reads YAML with go-yaml v2, YAML 1.1:
plain ``y``/``Y``/``n``/``N`` are booleans there and ``0o17`` is an integer, while PyYAML keeps
them as strings. A manifest with ``privileged: y`` passed CI and ran privileged (fixed in
``ci/manifests.py``).
"""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest

from webhook import cli


def _run(manifest: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(manifest)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(["check", *args, "-"])
    finally:
        sys.stdin = old
    return code, out.getvalue(), err.getvalue()


def _check(manifest: str, *args: str) -> tuple[int, list[dict[str, object]]]:
    code, out, _ = _run(manifest, "--format", "json", *args)
    return code, json.loads(out)


def _pod(security_context: str, pod_fields: str = "") -> str:
    return f"""apiVersion: v1
kind: Pod
metadata:
  name: sneaky
spec:
{pod_fields}  containers:
    - name: app
      image: nginx:1.27
      securityContext:
{security_context}
"""


@pytest.mark.parametrize(
    ("manifest", "check"),
    [
        (_pod("        privileged: y"), "pss:privileged"),
        (_pod("        privileged: Y"), "pss:privileged"),
        (_pod("        allowPrivilegeEscalation: n", "  hostPID: y\n"), "pss:hostNamespaces"),
        (_pod("        privileged: yes"), "pss:privileged"),  # YAML 1.1 in both readers
        (_pod("        privileged: On"), "pss:privileged"),
    ],
    ids=["y", "Y", "hostPID-y", "yes", "On"],
)
def test_yaml_1_1_booleans_read_like_kubectl(manifest: str, check: str) -> None:
    code, results = _check(manifest)
    assert code == 1
    assert check in {v["check"] for v in results[0]["violations"]}  # type: ignore[index, union-attr]


def test_octal_root_user_reads_like_kubectl() -> None:
    manifest = _pod(
        "        runAsUser: 0o0\n        runAsNonRoot: true\n        allowPrivilegeEscalation: false\n"
        "        capabilities: {drop: [ALL]}\n        seccompProfile: {type: RuntimeDefault}"
    )
    code, results = _check(manifest, "--level", "restricted")
    assert code == 1
    assert "pss:runAsUser" in {v["check"] for v in results[0]["violations"]}  # type: ignore[index, union-attr]


@pytest.mark.parametrize("value", ["0.0", "-0.0", "0.0e+3", ".0", "0e0", "0.0e0", "0E0", "00", "0X0", "0O0", "0B0"])
def test_a_float_or_prefixed_root_user_reads_like_kubectl(value: str) -> None:
    """Fixed: each passed ``--level restricted``. go-yaml reads them as 0 (a float for the first
    seven; PyYAML keeps ``0e0``, ``0.0e0``, ``0E0`` and the upper-case prefixes as strings),
    sigs.k8s.io/yaml writes a whole float to JSON as ``0``, and the apiserver stores UID 0; the
    check only counted integers, and the reader only knew the plain one-letter booleans and 0o."""
    manifest = _pod(
        f"        runAsUser: {value}\n        runAsNonRoot: true\n        allowPrivilegeEscalation: false\n"
        "        capabilities: {drop: [ALL]}\n        seccompProfile: {type: RuntimeDefault}"
    )
    code, results = _check(manifest, "--level", "restricted")
    assert code == 1
    assert "pss:runAsUser" in {v["check"] for v in results[0]["violations"]}  # type: ignore[index, union-attr]


def test_a_float_root_user_in_json_reads_like_kubectl() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sneaky"},
        "spec": {
            "securityContext": {"runAsUser": 1000.0, "runAsNonRoot": True, "seccompProfile": {"type": "Localhost"}},
            "containers": [
                {
                    "name": "app",
                    "image": "nginx:1.27",
                    "securityContext": {
                        "runAsUser": 0.0,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    code, results = _check(json.dumps(pod), "--level", "restricted")
    assert code == 1
    found = [v for v in results[0]["violations"] if v["check"] == "pss:runAsUser"]  # type: ignore[index, union-attr]
    assert [v["path"] for v in found] == ["spec.containers[0].securityContext.runAsUser"]  # type: ignore[index]


def test_false_is_not_a_root_user() -> None:
    """``False == 0`` in Python, but a boolean UID is refused by the apiserver: no finding."""
    manifest = _pod(
        "        runAsUser: false\n        runAsNonRoot: true\n        allowPrivilegeEscalation: false\n"
        "        capabilities: {drop: [ALL]}\n        seccompProfile: {type: RuntimeDefault}"
    )
    code, results = _check(manifest, "--level", "restricted")
    assert code == 0, results


@pytest.mark.parametrize("value", ["'y'", '"Y"', "yep", "n1"])
def test_quoted_and_longer_strings_stay_strings(value: str) -> None:
    """Only the plain one-letter forms are booleans to go-yaml; the rest stay strings (and a
    string where a bool belongs is refused by the apiserver, so it is no finding here)."""
    code, results = _check(_pod(f"        privileged: {value}"))
    assert code == 0, results


def test_duplicate_keys_are_refused_not_resolved() -> None:
    """``privileged: false`` then ``privileged: true``: CI refuses the document (exit 2) rather
    than guess which of the two values the cluster would see."""
    code, out, err = _run(_pod("        privileged: false\n        privileged: true"))
    assert code == 2
    assert "duplicate key" in err + out
