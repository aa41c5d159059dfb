"""Hostile or careless policy files against the embedded engine (real regopy): what a policy may
reach (the webhook's environment), how a directory is read (the ConfigMap mount layout, a BOM),
the bundle's own reserved package, and how much one policy's answer may weigh."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook import errors
from webhook.checks import rego as rego_check
from webhook.core.decision import FailureMode
from webhook.policy import gatekeeper, isolation, lifecycle, probe, rego

DENY = 'package a\nimport rego.v1\ndefault limit := 3\ndeny contains "no" if input.n > limit\n'


def test_opa_runtime_is_refused_because_it_hands_policies_the_process_environment(tmp_path: Path) -> None:
    # rego-cpp's opa.runtime() returns every environment variable of the process evaluating it:
    # the webhook's (tokens, keys) or a CI job's secrets, echoed in a deny message.
    (tmp_path / "leak.rego").write_text(
        'package leak\nimport rego.v1\n\ndeny contains msg if {\n  msg := sprintf("%v", [opa.runtime().env])\n}\n'
    )
    with pytest.raises(errors.PolicyLoadError, match=r"leak\.rego:5:\d+: .*opa\.runtime"):
        rego.load_directory([tmp_path])


async def test_policy_workers_do_not_inherit_the_webhooks_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTCULLIS_TEST_SECRET", "hunter2")
    (tmp_path / "a.rego").write_text(DENY)
    compiled = rego.load_directory([tmp_path])
    pool = isolation.WorkerPool(1)
    pool.configure(rego_check.worker_spec(compiled, None, strict=False))
    await pool.start()
    try:
        (pid,) = pool.pids()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith(b"PORTCULLIS_TEST_SECRET=")]
        assert any(e.startswith(b"PATH=") for e in environ)
    finally:
        await pool.close()


def _configmap(root: Path, files: dict[str, str]) -> None:
    """The layout kubelet gives a ConfigMap volume: the files in a timestamped hidden directory,
    ``..data`` linking to it, and one symlink per key through ``..data``."""
    stamped = root / "..2026_12_04_10_00_00.123456789"
    stamped.mkdir(parents=True)
    for name, text in files.items():
        (stamped / name).write_text(text)
    (root / "..data").symlink_to(stamped.name)
    for name in files:
        (root / name).symlink_to(f"..data/{name}")


def test_a_configmap_mount_loads_each_policy_once(tmp_path: Path) -> None:
    _configmap(tmp_path, {"a.rego": DENY})
    compiled = rego.load_directory([tmp_path])
    assert [(p.id, p.file) for p in compiled.policies] == [("a", str(tmp_path / "a.rego"))]
    (result,) = compiled.evaluate({"n": 5})
    assert result.deny == (rego.Item("no"),)
    assert [f[0] for f in lifecycle.fingerprint([tmp_path])] == [str(tmp_path / "a.rego")]


def test_a_configmap_mount_loads_each_gatekeeper_template_once(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2] / "policies" / "gatekeeper" / "required-labels"
    files = {p.name: p.read_text() for p in (root / "template.yaml", root / "constraint.yaml")}
    (tmp_path / "mine").mkdir()
    for name, text in files.items():
        (tmp_path / "mine" / name).write_text(text)
    tmp_path = tmp_path / "mounted"
    _configmap(tmp_path, files)
    loaded = gatekeeper.load([tmp_path])
    assert loaded.policy_ids
    assert loaded.policy_ids == gatekeeper.load([tmp_path.parent / "mine"]).policy_ids


def test_a_utf8_bom_does_not_hide_the_package(tmp_path: Path) -> None:
    (tmp_path / "a.rego").write_bytes(b"\xef\xbb\xbf" + DENY.replace("\n", "\r\n").encode())
    (result,) = rego.load_directory([tmp_path]).evaluate({"n": 5})
    assert result.deny == (rego.Item("no"),)


def test_the_bundles_own_package_is_reserved(tmp_path: Path) -> None:
    (tmp_path / "a.rego").write_text(DENY)
    (tmp_path / "b.rego").write_text("package portcullis_bundle\nimport rego.v1\np0 := [[], []]\n")
    with pytest.raises(errors.PolicyLoadError, match=r"b\.rego:1:1: .*portcullis_bundle.* reserved"):
        rego.load_directory([tmp_path])


def test_a_giant_message_or_item_list_is_cut(tmp_path: Path) -> None:
    (tmp_path / "a.rego").write_text(
        "package a\nimport rego.v1\n"
        'deny contains {"msg": concat("", ["x" | some i in numbers.range(1, input.n)]), "path": "p"} if true\n'
        'deny contains sprintf("item %d", [i]) if some i in numbers.range(1, 3000)\n'
    )
    (result,) = rego.load_directory([tmp_path]).evaluate({"n": 200_000})
    assert result.error is None
    assert len(result.deny) <= rego.MAX_ITEMS + 1
    assert all(len(i.msg) <= rego.MAX_TEXT + 40 for i in result.deny)
    assert any("more" in i.msg for i in result.deny)
    verdict = rego_check.to_result([result], FailureMode.DENY)
    assert verdict.violations
    assert sum(len(v.message) for v in verdict.violations) < 2 << 20


def test_an_unknown_builtin_call_site_is_not_hidden_by_whitespace(tmp_path: Path) -> None:
    (tmp_path / "leak.rego").write_text(
        "package leak\nimport rego.v1\ndeny contains x if {\n  x := opa.runtime\n  (\n  )\n}\n"
    )
    with pytest.raises(errors.PolicyLoadError):
        rego.load_directory([tmp_path])


def test_the_webhook_compiles_the_very_sources_the_crash_probe_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An edit landing between the probe (a child reading the files) and the webhook's own
    # compile would install a version no probe ever ran: the crash it guards against then
    # takes the webhook down. The edit must wait for the next reload, probed in its turn.
    policy = tmp_path / "a.rego"
    policy.write_text('package a\nimport rego.v1\ndeny contains "v1" if true\n')
    probed = probe.check

    def edit_after_probe(*args: object, **kwargs: object) -> None:
        probed(*args, **kwargs)  # type: ignore[arg-type]
        policy.write_text('package a\nimport rego.v1\ndeny contains "v2, never probed" if true\n')

    monkeypatch.setattr(probe, "check", edit_after_probe)
    engine = rego.engine([tmp_path])
    (result,) = engine.load().evaluate({})
    assert result.deny == (rego.Item("v1"),)
    monkeypatch.setattr(probe, "check", probed)
    assert engine.reload_if_changed()
    assert engine.current is not None
    (result,) = engine.current.evaluate({})
    assert result.deny == (rego.Item("v2, never probed"),)


def test_a_package_with_only_a_gatekeeper_violation_rule_is_said_not_silently_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Gatekeeper habit in a plain policy file: ``violation`` is not read here, so the file
    judges nothing; loading says so, naming the file, and still loads the real policies."""
    (tmp_path / "gk.rego").write_text(
        'package gk.privileged\n\nviolation contains {"msg": "no"} if input.request.object.spec.hostPID\n'
    )
    (tmp_path / "ok.rego").write_text('package ok\n\ndeny contains "no" if input.request.object.spec.hostIPC\n')
    with caplog.at_level("WARNING", logger="portcullis.policy"):
        compiled = rego.load_directory([tmp_path])
    assert [p.package for p in compiled.policies] == ["ok"]
    (record,) = [r for r in caplog.records if "not a policy" in r.getMessage()]
    assert "gk.rego" in record.getMessage()
    assert "violation" in record.getMessage()


def test_the_crash_probe_reports_the_error_alone_not_the_loads_warnings(tmp_path: Path) -> None:
    """The probe child's stderr is its error channel: a load warning there (said by the webhook's
    own compile anyway) must not stand in the error the operator reads."""
    (tmp_path / "gk.rego").write_text('package gk\n\nviolation contains "no" if input.x\n')
    (tmp_path / "bad.rego").write_text("package bad\n\ndeny contains if {\n")
    with pytest.raises(errors.PolicyLoadError) as caught:
        probe.check("rego", [tmp_path])
    assert "bad.rego" in str(caught.value)
    assert "not a policy" not in str(caught.value)
