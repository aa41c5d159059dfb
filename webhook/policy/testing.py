"""``portcullis policy test``: Rego unit tests (``test_`` rules) and gator-style ``Suite`` files
(``kind: Suite``: template + constraint + cases with ``violations: yes|no|N``).

Rego tests run with the very engine admission uses (one bundle, one entrypoint per test); a
test passes when its rule is true. Suites load templates and constraints through
``policy.gatekeeper`` and judge objects as a CREATE review, constraint match included.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from webhook import errors
from webhook.policy import gatekeeper, modules, native, rego


@dataclass(frozen=True, slots=True)
class TestResult:
    """One test: where it lives, whether it passed, and why not."""

    name: str  # "portcullis.labels_test.test_missing_label" or "suite/test/case"
    file: str
    passed: bool
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "passed": self.passed, "message": self.message}


def run(paths: Sequence[Path]) -> list[TestResult]:
    """Every Rego test and every Suite under ``paths``; raise ``PolicyLoadError`` on bad input."""
    results = run_rego_tests(paths)
    for suite in find_suites(paths):
        results.extend(run_suite(suite))
    return results


def run_rego_tests(paths: Sequence[Path]) -> list[TestResult]:
    """Each ``*_test.rego`` file with every non-test module, in its own process.

    rego-cpp 1.x can crash (abort or segfault) on some ``with`` forms; isolating each test
    file turns such a crash into a failed test that names the file instead of killing the run.
    """
    files = modules.discover(paths, tests=True)
    policies = [p for p in files if not p.name.endswith("_test.rego")]
    results: list[TestResult] = []
    for test_file in (p for p in files if p.name.endswith("_test.rego")):
        results.extend(_isolated([*policies, test_file], test_file))
    return results


def _isolated(files: Sequence[Path], test_file: Path) -> list[TestResult]:
    args = [sys.executable, "-m", "webhook.policy.testing", *map(str, files)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode == 0:
        return [TestResult(**r) for r in json.loads(proc.stdout)]
    if proc.returncode == 2:
        raise errors.PolicyLoadError(proc.stderr.strip())
    why = f"the embedded Rego engine crashed (exit {proc.returncode}) while running this file"
    detail = proc.stderr.strip().splitlines()[-1:] or [""]
    return [TestResult(f"{test_file}", str(test_file), False, f"{why}: {detail[0]}".rstrip(": "))]


def run_in_process(files: Sequence[Path]) -> list[TestResult]:
    """Compile ``files`` once; evaluate each ``test_`` rule of the ``*_test.rego`` ones."""
    mods = [modules.read(p) for p in files]
    tests = [(m, t) for m in mods if m.name.endswith("_test.rego") for t in m.tests]
    if not tests:
        return []
    entrypoints = sorted({f"{m.package_path}/{t}" for m, t in tests})
    compiled = rego.compile_modules(mods, extra_entrypoints=entrypoints)
    results: list[TestResult] = []
    seen: set[str] = set()
    for module, test in tests:
        name = f"{module.package}.{test}"
        if name in seen:
            continue
        seen.add(name)
        interpreter = native.interpreter()
        try:
            native.set_input(interpreter, {})
            value = native.query(interpreter, compiled.bundle, f"{module.package_path}/{test}")
        except native.PolicyEvalError as exc:
            results.append(TestResult(name, module.name, False, f"error: {exc}"))
            continue
        if value is True:
            results.append(TestResult(name, module.name, True))
        else:
            why = "undefined (a condition in the test body did not hold)" if value is None else f"got {value!r}"
            results.append(TestResult(name, module.name, False, why))
    return results


def find_suites(paths: Sequence[Path]) -> list[Path]:
    """YAML files whose first document is ``kind: Suite``."""
    suites: list[Path] = []
    for root in paths:
        candidates = [root] if root.is_file() else sorted(root.rglob("*")) if root.is_dir() else []
        for path in candidates:
            if path.suffix not in (".yaml", ".yml"):
                continue
            try:
                head = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if re.search(r"^kind:\s*Suite\s*$", head, re.MULTILINE):
                suites.append(path)
    return suites


def run_suite(path: Path) -> list[TestResult]:
    """Run one gator Suite file."""
    suite = _yaml_one(path)
    base = path.parent
    suite_name = str((suite.get("metadata") or {}).get("name") or path.parent.name)
    results: list[TestResult] = []
    for t_index, test in enumerate(suite.get("tests") or []):
        where = f"{path}: tests[{t_index}]"
        test_name = str(test.get("name") or f"test-{t_index}")
        for key in ("template", "constraint"):
            if not isinstance(test.get(key), str):
                raise errors.PolicyLoadError(f"{where}: `{key}` must name a file relative to the suite")
        loaded = gatekeeper.load([base / test["template"], base / test["constraint"]])
        if len(loaded.constraints) != 1:
            raise errors.PolicyLoadError(f"{where}: {test['constraint']} must hold exactly one constraint")
        constraint = loaded.constraints[0]
        for c_index, case in enumerate(test.get("cases") or []):
            case_name = str(case.get("name") or f"case-{c_index}")
            name = f"{suite_name}/{test_name}/{case_name}"
            results.append(_run_case(name, str(path), f"{where}.cases[{c_index}]", base, case, loaded, constraint))
    return results


def _run_case(
    name: str,
    file: str,
    where: str,
    base: Path,
    case: Mapping[str, Any],
    loaded: gatekeeper.GatekeeperSet,
    constraint: gatekeeper.Constraint,
) -> TestResult:
    if case.get("inventory"):
        raise errors.PolicyLoadError(f"{where}: `inventory` (data.inventory) is not supported by portcullis")
    if not isinstance(case.get("object"), str):
        raise errors.PolicyLoadError(f"{where}: `object` must name a YAML file relative to the suite")
    obj = _yaml_one(base / case["object"])
    review = review_for(obj)
    if constraint.match.matches(review, {}):
        result = loaded.evaluate_one(constraint, review)
    else:
        result = rego.PolicyResult(rego.Policy(constraint.id, constraint.kind, constraint.file))
    if result.error:
        return TestResult(name, file, False, f"error: {result.error}")
    messages = [item.msg for item in result.deny]
    for a_index, assertion in enumerate(case.get("assertions") or []):
        problem = _check_assertion(assertion, messages, f"{where}.assertions[{a_index}]")
        if problem:
            return TestResult(name, file, False, problem)
    return TestResult(name, file, True)


def _check_assertion(assertion: Mapping[str, Any], messages: list[str], where: str) -> str | None:
    expected = assertion.get("violations", "yes")
    pattern = assertion.get("message")
    matching = [m for m in messages if pattern is None or re.search(str(pattern), m)]
    n = len(matching)
    about = f" matching {pattern!r}" if pattern is not None else ""
    if expected is True or expected == "yes":
        ok, want = n > 0, "at least one violation"
    elif expected is False or expected == "no":
        ok, want = n == 0, "no violations"
    elif isinstance(expected, int):
        ok, want = n == expected, f"{expected} violation(s)"
    else:
        raise errors.PolicyLoadError(f"{where}: `violations` must be yes, no or a number, got {expected!r}")
    if ok:
        return None
    return f"expected {want}{about}, got {n}: {messages}"


def review_for(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The ``input.review`` Gatekeeper builds for a CREATE of ``obj`` (what gator does)."""
    group, _, version = str(obj.get("apiVersion") or "").rpartition("/")
    metadata = obj.get("metadata") or {}
    return {
        "kind": {"group": group, "version": version, "kind": obj.get("kind", "")},
        "name": metadata.get("name", ""),
        "namespace": metadata.get("namespace", ""),
        "operation": "CREATE",
        "userInfo": {"username": "portcullis-policy-test", "groups": []},
        "object": obj,
        "oldObject": None,
        "dryRun": False,
    }


def _yaml_one(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise errors.PolicyLoadError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise errors.PolicyLoadError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(data, dict):
        raise errors.PolicyLoadError(f"{path}: expected one YAML mapping")
    return data


def _main(argv: Sequence[str]) -> int:
    """Worker entry (``python -m webhook.policy.testing FILE...``): JSON results on stdout."""
    try:
        results = run_in_process([Path(a) for a in argv])
    except errors.PolicyLoadError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps([r.to_json() for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
