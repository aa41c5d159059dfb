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
    test_files = [p for p in files if p.name.endswith("_test.rego")]
    results: list[TestResult] = []
    if policies and not test_files:
        _isolated(policies, None)  # no tests, but the policies must still compile (exit 2 if not)
    for test_file in test_files:
        results.extend(_isolated([*policies, test_file], test_file))
    return results


def _isolated(files: Sequence[Path], test_file: Path | None) -> list[TestResult]:
    args = [sys.executable, "-m", "webhook.policy.testing", *map(str, files)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode == 0:
        return [TestResult(**r) for r in json.loads(proc.stdout)]
    if proc.returncode == 2:
        raise errors.PolicyLoadError(proc.stderr.strip())
    why = f"the embedded Rego engine crashed (exit {proc.returncode}) while running this file"
    detail = proc.stderr.strip().splitlines()[-1:] or [""]
    where = str(test_file) if test_file is not None else ", ".join(map(str, files))
    return [TestResult(where, where, False, f"{why}: {detail[0]}".rstrip(": "))]


def run_in_process(files: Sequence[Path]) -> list[TestResult]:
    """Compile ``files`` once; evaluate each ``test_`` rule of the ``*_test.rego`` ones."""
    mods = [modules.read(p) for p in files]
    tests = [(m, t) for m in mods if m.name.endswith("_test.rego") for t in m.tests]
    entrypoints = sorted({f"{m.package_path}/{t}" for m, t in tests})
    compiled = rego.compile_modules(mods, extra_entrypoints=entrypoints)  # raises on a broken file
    if not tests:
        return []
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
    """Run one gator Suite file as ``gator verify`` does: each test loads its template and
    constraint (a template that does not compile fails that test, with the compiler's message,
    unless the test says ``invalid: true``); each case reviews one object, with the case's
    ``inventory`` objects as ``data.inventory`` and their Namespaces known to the match."""
    suite = _yaml_one(path)
    base = path.parent
    suite_name = str((suite.get("metadata") or {}).get("name") or path.parent.name)
    results: list[TestResult] = []
    tests = suite.get("tests") or []
    if not isinstance(tests, list):
        raise errors.PolicyLoadError(f"{path}: `tests` must be a list")
    for t_index, test in enumerate(tests):
        where = f"{path}: tests[{t_index}]"
        if not isinstance(test, dict):
            raise errors.PolicyLoadError(f"{where}: must be a mapping")
        test_name = str(test.get("name") or f"test-{t_index}")
        if test.get("skip") is True:
            continue
        for key in ("template", "constraint"):
            if not isinstance(test.get(key), str):
                raise errors.PolicyLoadError(f"{where}: `{key}` must name a file relative to the suite")
        try:
            loaded = gatekeeper.load([base / test["template"], base / test["constraint"]])
            if len(loaded.constraints) != 1:
                raise errors.PolicyLoadError(f"{test['constraint']} must hold exactly one constraint")
        except errors.PolicyLoadError as exc:
            name = f"{suite_name}/{test_name}"
            if test.get("invalid") is True:
                results.append(TestResult(name, str(path), True))
            else:
                results.append(TestResult(name, str(path), False, f"error: {exc}"))
            continue
        if test.get("invalid") is True:
            message = "the constraint was expected to be invalid, but it loaded"
            results.append(TestResult(f"{suite_name}/{test_name}", str(path), False, message))
            continue
        constraint = loaded.constraints[0]
        cases = test.get("cases") or []
        if not isinstance(cases, list):
            raise errors.PolicyLoadError(f"{where}: `cases` must be a list")
        for c_index, case in enumerate(cases):
            if not isinstance(case, dict):
                raise errors.PolicyLoadError(f"{where}.cases[{c_index}]: must be a mapping")
            if case.get("skip") is True:
                continue
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
    if not isinstance(case.get("object"), str):
        raise errors.PolicyLoadError(f"{where}: `object` must name a YAML file relative to the suite")
    assertions = case.get("assertions")
    if not isinstance(assertions, list) or not assertions:
        return TestResult(name, file, False, "error: assertions must be non-empty")
    objects = _yaml_objects(base / case["object"])
    if len(objects) != 1:
        return TestResult(name, file, False, f"error: {case['object']} defines {len(objects)} objects, not 1")
    inventory = Inventory()
    for i, inventory_file in enumerate(_strings(case.get("inventory"), f"{where}.inventory")):
        for obj in _yaml_objects(base / inventory_file):
            problem = inventory.add(obj)
            if problem:
                raise errors.PolicyLoadError(f"{where}.inventory[{i}] ({inventory_file}): {problem}")
    try:
        review = review_of(objects[0])
    except errors.InputError as exc:
        return TestResult(name, file, False, f"error: {exc}")
    namespace = inventory.namespace(str(review.get("namespace") or ""))
    if namespace is not None:
        review["_unstable"] = {"namespace": namespace}
    messages: list[str] = []
    if constraint.enforced_at(gatekeeper.GATOR_POINT):
        try:
            matched = constraint.match.matches(review, namespace)
        except gatekeeper.MatchError as exc:
            return TestResult(name, file, False, f"error: matching {constraint.id}: {exc}")
        if matched:
            result = loaded.evaluate_one(constraint, review, inventory.document if inventory.used else {})
            if result.error:
                return TestResult(name, file, False, f"error: {result.error}")
            messages = [item.msg for item in result.deny]
    for a_index, assertion in enumerate(assertions):
        if not isinstance(assertion, dict):
            raise errors.PolicyLoadError(f"{where}.assertions[{a_index}]: must be a mapping")
        problem = _check_assertion(assertion, messages, f"{where}.assertions[{a_index}]")
        if problem:
            return TestResult(name, file, False, problem)
    return TestResult(name, file, True)


class Inventory:
    """``data.inventory`` as Gatekeeper replicates it: ``cluster[groupVersion][kind][name]`` and
    ``namespace[ns][groupVersion][kind][name]``; Namespaces are also what a match looks up."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"cluster": {}, "namespace": {}}
        self.used = False

    def add(self, obj: Mapping[str, Any]) -> str | None:
        """Add one object; return why it cannot be added (no version, kind or name)."""
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        assert isinstance(metadata, dict)
        name, namespace = metadata.get("name"), metadata.get("namespace")
        if not isinstance(api_version, str) or not api_version or not api_version.rpartition("/")[2]:
            return f"object {name!r} has no apiVersion"
        if not isinstance(kind, str) or not kind:
            return f"object {name!r} has no kind"
        if not isinstance(name, str) or not name:
            return f"a {kind} without metadata.name"
        self.used = True
        if isinstance(namespace, str) and namespace:
            by_ns = self.document["namespace"].setdefault(namespace, {})
            by_ns.setdefault(api_version, {}).setdefault(kind, {})[name] = dict(obj)
        else:
            self.document["cluster"].setdefault(api_version, {}).setdefault(kind, {})[name] = dict(obj)
        return None

    def namespace(self, name: str) -> dict[str, Any] | None:
        """The Namespace object called ``name``, when the inventory holds it."""
        if not name:
            return None
        found = self.document["cluster"].get("v1", {}).get("Namespace", {}).get(name)
        return found if isinstance(found, dict) else None


def _check_assertion(assertion: Mapping[str, Any], messages: list[str], where: str) -> str | None:
    """gator's assertion: count the results whose message matches ``message`` (a regular
    expression searched anywhere, every result when absent) against ``violations``."""
    expected = assertion.get("violations", "yes")
    pattern = assertion.get("message")
    if pattern is not None and not isinstance(pattern, str):
        raise errors.PolicyLoadError(f"{where}: `message` must be a string (a regular expression)")
    try:
        regex = re.compile(pattern) if pattern is not None else None
    except re.error as exc:
        raise errors.PolicyLoadError(f"{where}: `message` is not a valid regular expression: {exc}") from exc
    n = sum(1 for m in messages if regex is None or regex.search(m))
    about = f" matching {pattern!r}" if pattern is not None else ""
    if expected is True or expected == "yes":
        ok, want = n > 0, "at least one violation"
    elif expected is False or expected == "no":
        ok, want = n == 0, "no violations"
    elif isinstance(expected, int) and not isinstance(expected, bool) and expected >= 0:
        ok, want = n == expected, f"{expected} violation(s)"
    else:
        raise errors.PolicyLoadError(f"{where}: `violations` must be yes, no or a nonnegative number, got {expected!r}")
    if ok:
        return None
    return f"expected {want}{about}, got {n}: {messages}"


def review_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``input.review`` for a suite's object, as gator builds it: an ``AdmissionReview`` object
    gives its ``request`` (on DELETE, ``object`` is the old object); any other object gives what
    Gatekeeper derives from an object alone: its kind, name, namespace and the object."""
    if obj.get("kind") == "AdmissionReview" and str(obj.get("apiVersion") or "").startswith("admission.k8s.io/"):
        request = obj.get("request")
        if not isinstance(request, dict):
            raise errors.InputError("the AdmissionReview has no request")
        review = dict(request)
        if not isinstance(review.get("object"), dict) and not isinstance(review.get("oldObject"), dict):
            raise errors.InputError('the AdmissionRequest has no "object" or "oldObject" to review')
        if review.get("operation") == "DELETE":
            review["object"] = review.get("oldObject")
        return review
    group, _, version = str(obj.get("apiVersion") or "").rpartition("/")
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    review = {
        "uid": "",
        "kind": {"group": group, "version": version, "kind": obj.get("kind", "")},
        "resource": {"group": "", "version": "", "resource": ""},
        "operation": "",
        "userInfo": {},
        "object": obj,
        "oldObject": None,
    }
    for key in ("name", "namespace"):
        if isinstance(metadata.get(key), str) and metadata[key]:
            review[key] = metadata[key]
    return review


def review_for(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The ``input.review`` Gatekeeper builds for a CREATE of ``obj`` (scans and replays)."""
    review = review_of(obj)
    review["operation"] = "CREATE"
    return review


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.PolicyLoadError(f"{where}: must be a list of file names relative to the suite")
    return value


def _yaml_objects(path: Path) -> list[dict[str, Any]]:
    """Every mapping document of a YAML file (a suite's object or inventory file)."""
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise errors.PolicyLoadError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise errors.PolicyLoadError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    out: list[dict[str, Any]] = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise errors.PolicyLoadError(f"{path}: every YAML document must be a mapping (a Kubernetes object)")
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            out.extend(i for i in doc["items"] if isinstance(i, dict))
        else:
            out.append(doc)
    return out


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
