"""`portcullis check` judges every kind the way the webhook does: a Gatekeeper constraint on
Ingresses applies to Ingress manifests in CI, a kind no check applies to is counted as skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from webhook import cli

ROOT = Path(__file__).resolve().parents[2]
INGRESS_HOSTS = ROOT / "policies" / "gatekeeper" / "ingress-hosts"


def _ingress(name: str, host: str) -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "web"},
        "spec": {"rules": [{"host": host}]},
    }


def test_an_ingress_constraint_is_enforced_on_ingress_manifests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gatekeeper = tmp_path / "gatekeeper"
    gatekeeper.mkdir()
    for name in ("template.yaml", "constraint.yaml"):
        (gatekeeper / name).write_text((INGRESS_HOSTS / name).read_text())
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"policy": {"gatekeeper": [str(gatekeeper)]}}))
    manifests = tmp_path / "app.yaml"
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}
    manifests.write_text(
        yaml.safe_dump_all([_ingress("ours", "shop.example.com"), _ingress("theirs", "evil.example.net"), config_map])
    )
    code = cli.main(["check", str(manifests), "--config", str(config), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    verdicts = {o["name"]: o for o in report}
    assert set(verdicts) == {"ours", "theirs"}  # the ConfigMap: no check applies to it
    assert verdicts["ours"]["allowed"] is True
    assert verdicts["theirs"]["allowed"] is False
    assert any("evil.example.net" in v["message"] for v in verdicts["theirs"]["violations"])
