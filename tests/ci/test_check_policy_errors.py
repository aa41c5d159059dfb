"""`portcullis check` with a custom policy that errors: CI must not pass a manifest a policy
could not judge, whatever the failure mode the webhook would apply to it at admission."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import run_check

BROKEN = (
    "# METADATA\n# custom:\n#   failure_mode: allow\n"
    "package broken\nimport rego.v1\n"
    'deny contains "big" if input.pods[0].spec.containers[0].name > 3\n'
    'warn contains 1 if input.request.kind.kind == "Pod"\n'
)
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]},
}


@pytest.mark.parametrize("failure_mode", ["allow", "deny"])
def test_a_policy_that_errors_exits_2_in_ci(tmp_path: Path, failure_mode: str) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "broken.rego").write_text(BROKEN.replace("failure_mode: allow", f"failure_mode: {failure_mode}"))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"policy": {"directory": str(policies)}}))
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(POD))
    code, out, err = run_check(str(manifest), "--config", str(config), "--format", "json")
    assert code == 2, (out, err)
    assert "broken" in err
