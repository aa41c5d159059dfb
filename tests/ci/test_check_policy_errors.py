"""`portcullis check` with a custom policy that errors: CI must not pass a manifest a policy
could not judge, whatever the failure mode the webhook would apply to it at admission."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from opa_stub import serve

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


LOOP = (
    "# METADATA\n# custom:\n#   failure_mode: allow\n"
    "package loop\nimport rego.v1\n"
    'deny contains "never" if {\n  some i in numbers.range(1, 100000)\n'
    "  some j in numbers.range(1, 100000)\n  i * j == -1\n}\n"
)


def test_a_policy_that_overruns_exits_2_in_ci(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "loop.rego").write_text(LOOP)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"policy": {"directory": str(policies), "timeout": 0.5, "failure_mode": "allow"}}))
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(POD))
    code, out, err = run_check(str(manifest), "--config", str(config), "--format", "json")
    assert code == 2, (out, err)
    assert "loop" in err


async def _opa(answer: object) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(answer)

    return await serve(handler)


@pytest.mark.parametrize("answer", [{}, {"result": {}}])
async def test_a_remote_opa_that_judges_nothing_exits_2_in_ci(tmp_path: Path, answer: object) -> None:
    runner, url = await _opa(answer)
    try:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"policy": {"engine": "opa", "opa_url": url, "failure_mode": "allow"}}))
        manifest = tmp_path / "pod.yaml"
        manifest.write_text(yaml.safe_dump(POD))
        args = (str(manifest), "--config", str(config), "--format", "json")
        code, out, err = await asyncio.to_thread(run_check, *args)
    finally:
        await runner.cleanup()
    assert code == 2, (out, err)
