"""The embedded engine (real regopy): bundle compile, evaluation, bad input, reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook import errors
from webhook.core.decision import Mode
from webhook.policy import modules, rego

ROOT = Path(__file__).resolve().parents[2]

GOOD = """# METADATA
# title: No latest
# custom:
#   id: no-latest
#   mode: warn
package t.nolatest
import rego.v1
deny contains {"msg": sprintf("%s uses :latest", [c.name]), "path": "spec.containers"} if {
  some c in input.pods[_].spec.containers
  endswith(c.image, ":latest")
}
warn contains "always" if input.pods
"""


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def doc(image: str) -> dict:
    return {"pods": [{"path": "spec", "metadata": {}, "spec": {"containers": [{"name": "c", "image": image}]}}]}


def test_metadata_sets_policy_id_and_mode(tmp_path: Path) -> None:
    write(tmp_path, "a.rego", GOOD)
    compiled = rego.load_directory([tmp_path])
    (policy,) = compiled.policies
    assert (policy.id, policy.mode, policy.title) == ("no-latest", Mode.WARN, "No latest")


def test_deny_objects_and_warn_strings_are_returned(tmp_path: Path) -> None:
    write(tmp_path, "a.rego", GOOD)
    (result,) = rego.load_directory([tmp_path]).evaluate(doc("x:latest"))
    assert result.deny == (rego.Item("c uses :latest", None, "spec.containers"),)
    assert result.warn == (rego.Item("always"),)
    assert result.error is None


def test_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    write(tmp_path, "broken.rego", "package b\n\ndeny contains x if {\n  x := input.a +\n}\n")
    with pytest.raises(errors.PolicyLoadError, match=r"broken\.rego:4:16: Invalid arithmetic operator"):
        rego.load_directory([tmp_path])


def test_undefined_function_is_rejected_at_load(tmp_path: Path) -> None:
    write(tmp_path, "u.rego", "package u\nimport rego.v1\ndeny contains x if { x := nofunc(1) }\n")
    with pytest.raises(errors.PolicyLoadError, match=r"u\.rego:3:27: undefined function `nofunc`"):
        rego.load_directory([tmp_path])


def test_module_without_package_is_rejected(tmp_path: Path) -> None:
    write(tmp_path, "p.rego", "deny := 1\n")
    with pytest.raises(errors.PolicyLoadError, match=r"p\.rego:1:1: no `package`"):
        rego.load_directory([tmp_path])


def test_bad_metadata_mode_is_rejected(tmp_path: Path) -> None:
    write(tmp_path, "m.rego", "# METADATA\n# custom:\n#   mode: loud\npackage m\ndeny contains 1 if false\n")
    with pytest.raises(errors.PolicyLoadError, match=r"custom.mode is 'loud' \(allowed: enforce"):
        rego.load_directory([tmp_path])


def test_eval_error_is_attributed_and_other_policies_still_answer(tmp_path: Path) -> None:
    write(tmp_path, "a.rego", GOOD)
    write(tmp_path, "c.rego", "package t.conflict\nimport rego.v1\ndeny := input.pods\ndeny := 3 if input.pods\n")
    results = {r.policy.id: r for r in rego.load_directory([tmp_path]).evaluate(doc("x:latest"))}
    assert "multiple outputs" in results["t.conflict"].error
    assert "t.conflict (" in results["t.conflict"].error
    assert results["no-latest"].deny


def test_wrong_output_shape_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "s.rego", "package s\nimport rego.v1\ndeny := 3\n")
    (result,) = rego.load_directory([tmp_path]).evaluate({})
    assert "`deny` must be a set" in result.error


def test_items_without_msg_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, "s.rego", 'package s\nimport rego.v1\ndeny contains {"message": "x"} if true\n')
    (result,) = rego.load_directory([tmp_path]).evaluate({})
    assert "string `msg`" in result.error


def test_v0_partial_set_heads_are_read_as_sets() -> None:
    module = modules.parse("v0.rego", 'package v\ndeny[{"msg": m}] {\n  m := "x"\n}\n')
    assert module.source.splitlines()[1] == 'deny contains {"msg": m} if {'
    (result,) = rego.compile_modules([module]).evaluate({})
    assert result.deny == (rego.Item("x"),)


def test_with_input_as_is_rejected_because_it_crashes_the_engine(tmp_path: Path) -> None:
    write(tmp_path, "w_test.rego", "package w\nimport rego.v1\ntest_a if { true with input as {} }\n")
    mods = [modules.read(p) for p in modules.discover([tmp_path], tests=True)]
    with pytest.raises(errors.PolicyLoadError, match=r"with input as <document>"):
        rego.compile_modules(mods)


def test_broken_reload_keeps_last_good_bundle(tmp_path: Path) -> None:
    path = write(tmp_path, "a.rego", GOOD)
    engine = rego.engine([tmp_path])
    engine.load()
    path.write_text(GOOD + "\ndeny contains x if {\n")
    assert engine.reload_if_changed() is False
    assert engine.status.last_error is not None
    assert "a.rego:" in engine.status.last_error
    assert engine.current is not None
    assert engine.current.evaluate(doc("x:latest"))[0].deny
    path.write_text(GOOD.replace(":latest", ":dev"))
    assert engine.reload_if_changed() is True
    assert engine.status.last_error is None
    assert engine.current.evaluate(doc("x:dev"))[0].deny


def test_library_compiles_with_every_policy() -> None:
    compiled = rego.load_directory([ROOT / "policies"])
    assert set(compiled.policy_ids) == {
        "allowed-registries",
        "required-labels",
        "gpu-resources",
        "model-serving-digest",
        "no-host-ipc-multi-gpu",
        "max-gpus-per-job",
    }


def test_one_bundle_serves_concurrent_threads() -> None:
    import threading

    compiled = rego.load_directory([ROOT / "policies"])
    docs = [
        {"pods": doc(image)["pods"], "request": {"object": {"metadata": {"labels": {"team": "a", "cost-center": "b"}}}}}
        for image in ("docker.io/x", "registry.example.com/a:1")
    ]
    expected = [compiled.evaluate(d) for d in docs]
    mismatches: list[int] = []

    def work(k: int) -> None:
        mismatches.extend(k for _ in range(25) if compiled.evaluate(docs[k]) != expected[k])

    threads = [threading.Thread(target=work, args=(k % 2,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mismatches == []
    assert sum(len(r.deny) for r in expected[0]) == 1


CRASHING = """package crash
import rego.v1
deny contains msg if {
  some c in input.pods[_].spec.containers
  not allowed(c.image)
  allowed := "x"
  msg := concat("", [c.image, allowed])
}
allowed(image) if startswith(image, "registry.example.com/")
"""


def test_crash_probe_rejects_a_policy_that_crashes_the_engine(tmp_path: Path) -> None:
    write(tmp_path, "crash.rego", CRASHING)
    with pytest.raises(
        errors.PolicyLoadError, match=r"policy crash \(.*crash\.rego\): the embedded Rego engine crashed"
    ):
        rego.engine([tmp_path]).load()


def test_crashing_reload_keeps_last_good_bundle(tmp_path: Path) -> None:
    path = write(tmp_path, "a.rego", GOOD)
    engine = rego.engine([tmp_path])
    engine.load()
    path.write_text(CRASHING)
    assert engine.reload_if_changed() is False
    assert "crashed" in (engine.status.last_error or "")
    assert engine.current is not None
    assert engine.current.policy_ids == ("no-latest",)
