"""Gatekeeper compatibility: load ConstraintTemplates and their constraints from YAML, compile each
template's Rego (``spec.targets[].rego`` + ``libs``) with the embedded engine, and evaluate a
review the way Gatekeeper does: ``input.review`` is the admission request, ``input.parameters``
the constraint's ``spec.parameters``, results come from ``violation[{"msg": msg}]``.

Used by ``checks.rego`` and ``portcullis policy test`` (gator-style suites). Gatekeeper's
replicated cluster state (``data.inventory``) is not available here: a template that reads it
is rejected at load with a message saying so.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from webhook import errors, shapes
from webhook.core.decision import Mode
from webhook.policy import lifecycle, modules, native, rego
from webhook.policy import probe as crash_probe
from webhook.policy.rego import Policy, PolicyResult

TARGET = "admission.k8s.gatekeeper.sh"
_ACTIONS = {"deny": Mode.ENFORCE, "warn": Mode.WARN, "dryrun": Mode.AUDIT}


@dataclass(frozen=True, slots=True)
class Template:
    """One ConstraintTemplate, compiled."""

    kind: str  # the constraint kind it defines, e.g. K8sRequiredLabels
    file: str
    compiled: rego.CompiledPolicies
    entrypoint: str  # "<package path>/violation"


@dataclass(frozen=True, slots=True)
class Match:
    """``spec.match`` of a constraint (what Gatekeeper checks before evaluating)."""

    kinds: tuple[tuple[frozenset[str], frozenset[str]], ...] = ()
    namespaces: tuple[str, ...] = ()
    excluded_namespaces: tuple[str, ...] = ()
    label_selector: Mapping[str, Any] | None = None
    namespace_selector: Mapping[str, Any] | None = None
    scope: str = "*"
    name: str | None = None

    def matches(self, review: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> bool:
        """Whether the review falls under this constraint."""
        kind = review.get("kind") or {}
        if self.kinds and not any(
            _any_of(groups, kind.get("group", "")) and _any_of(kinds, kind.get("kind", ""))
            for groups, kinds in self.kinds
        ):
            return False
        namespace = review.get("namespace") or ""
        if (self.scope == "Cluster" and namespace) or (self.scope == "Namespaced" and not namespace):
            return False
        if self.namespaces and not _glob_any(self.namespaces, namespace):
            return False
        if self.excluded_namespaces and _glob_any(self.excluded_namespaces, namespace):
            return False
        if self.name and not fnmatch.fnmatchcase(review.get("name") or "", self.name):
            return False
        obj = review.get("object") or {}
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if self.label_selector is not None and not selects(self.label_selector, labels):
            return False
        return self.namespace_selector is None or selects(self.namespace_selector, namespace_labels)


@dataclass(frozen=True, slots=True)
class Constraint:
    """One constraint: which template, which parameters, what it matches, what it does."""

    kind: str
    name: str
    file: str
    parameters: Mapping[str, Any]
    match: Match
    mode: Mode

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class GatekeeperSet:
    """Templates and constraints loaded together (swapped whole on reload)."""

    templates: Mapping[str, Template]
    constraints: tuple[Constraint, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.constraints)

    def evaluate(self, review: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> list[PolicyResult]:
        """Every matching constraint's violations (synchronous: run it in a worker thread)."""
        out: list[PolicyResult] = []
        for constraint in self.constraints:
            if constraint.match.matches(review, namespace_labels):
                out.append(self.evaluate_one(constraint, review))
        return out

    def evaluate_one(self, constraint: Constraint, review: Mapping[str, Any]) -> PolicyResult:
        template = self.templates[constraint.kind]
        policy = Policy(id=constraint.id, package=template.kind, file=constraint.file, mode=constraint.mode)
        try:
            value = template.compiled.query(
                template.entrypoint, {"review": review, "parameters": constraint.parameters}
            )
        except native.PolicyEvalError as exc:
            return PolicyResult(policy, error=f"constraint {constraint.id} ({template.file}): {exc}")
        if value is None:
            value = []
        if isinstance(value, list):  # keep msg only: `details` is free-form in Gatekeeper
            value = [{"msg": v["msg"]} if isinstance(v, dict) and "msg" in v else v for v in value]
        return rego.result_of(policy, value, [])


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (``matchLabels`` + ``matchExpressions``) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _any_of(allowed: frozenset[str], value: str) -> bool:
    return "*" in allowed or value in allowed


def _glob_any(patterns: Iterable[str], value: str) -> bool:
    # Gatekeeper allows a trailing (or leading) '*' as a prefix (suffix) wildcard.
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


# --- loading ------------------------------------------------------------------------------------


def load(paths: Sequence[Path], *, strict_builtins: bool = False) -> GatekeeperSet:
    """Read every YAML file under ``paths``; raise ``PolicyLoadError`` listing every problem."""
    templates: dict[str, Template] = {}
    raw_constraints: list[tuple[str, Mapping[str, Any]]] = []
    problems: list[str] = []
    for path in _yaml_files(paths):
        for doc, line in _documents(path):
            try:
                kind = doc.get("kind")
                if kind == "ConstraintTemplate":
                    template = _template(path, doc, line, strict_builtins)
                    if template.kind in templates:
                        raise errors.PolicyLoadError(
                            f"{path}:{line}: template kind {template.kind} is also defined in "
                            f"{templates[template.kind].file}"
                        )
                    templates[template.kind] = template
                elif str(doc.get("apiVersion", "")).startswith("constraints.gatekeeper.sh/"):
                    raw_constraints.append((f"{path}:{line}", doc))
            except errors.PolicyLoadError as exc:
                problems.append(str(exc))
    constraints: list[Constraint] = []
    for where, raw in raw_constraints:
        try:
            constraints.append(constraint(where, raw, templates))
        except errors.PolicyLoadError as exc:
            problems.append(str(exc))
    if problems:
        raise errors.PolicyLoadError("\n".join(problems))
    return GatekeeperSet(templates, tuple(sorted(constraints, key=lambda c: c.id)))


def _yaml_files(paths: Sequence[Path]) -> list[Path]:
    files: set[Path] = set()
    for path in paths:
        if path.is_file():
            files.add(path)
        elif path.is_dir():
            files.update(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            raise errors.PolicyLoadError(f"{path}: no such Gatekeeper file or directory")
    return sorted(files)


def _documents(path: Path) -> list[tuple[dict[str, Any], int]]:
    """Each mapping document of a YAML file with its first line (for messages)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.PolicyLoadError(f"{path}: cannot read: {exc}") from exc
    out: list[tuple[dict[str, Any], int]] = []
    node: Any = None
    try:
        loader = yaml.SafeLoader(text)  # checks the characters first (ReaderError)
    except yaml.YAMLError as exc:
        raise errors.PolicyLoadError(f"{path}: invalid YAML: {exc}") from exc
    try:
        while loader.check_node():
            node = loader.get_node()
            doc = loader.construct_document(node)
            if isinstance(doc, dict):
                doc["__rego_lines__"] = _rego_lines(node)
                out.append((doc, node.start_mark.line + 1))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise errors.PolicyLoadError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    except RecursionError as exc:  # PyYAML composes and constructs recursively
        mark = loader.get_mark()
        raise errors.PolicyLoadError(f"{path}:{mark.line + 1}: YAML nested too deeply (flatten the structure)") from exc
    except ValueError as exc:  # PyYAML's timestamp constructor, e.g. ``2001-13-01``
        line = _bad_scalar_line(node)
        where = f"{path}:{line}" if line else str(path)
        raise errors.PolicyLoadError(f"{where}: invalid YAML value: {exc} (quote it to keep it a string)") from exc
    finally:
        loader.dispose()
    return out


def _bad_scalar_line(root: Any) -> int | None:
    """The 1-based line of the first scalar under ``root`` that PyYAML cannot construct."""
    constructor = yaml.constructor.SafeConstructor()
    stack = [root] if isinstance(root, yaml.Node) else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            try:
                constructor.construct_object(node)
            except ValueError:
                return int(node.start_mark.line) + 1
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
    return None


def _rego_lines(node: Any) -> dict[int, int]:
    """Target index → the 0-based YAML line where its ``rego: |`` block starts (for line numbers)."""
    lines: dict[int, int] = {}
    spec = _child(node, "spec")
    targets = _child(spec, "targets") if spec is not None else None
    for index, target in enumerate(getattr(targets, "value", None) or []):
        rego_node = _child(target, "rego")
        if rego_node is not None and getattr(rego_node, "style", None) in ("|", ">"):
            lines[index] = rego_node.start_mark.line + 1
    return lines


def _child(node: Any, key: str) -> Any:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if getattr(k, "value", None) == key:
            return v
    return None


def _fail(where: str) -> shapes.Fail:
    return lambda field_, problem: errors.PolicyLoadError(f"{where}: {field_} {problem}")


def _mapping(value: Any, where: str, field_: str) -> Mapping[str, Any]:
    """``value`` as a mapping (absent is empty); anything else names the field to fix."""
    return shapes.mapping(value, field_, _fail(where), noun="a mapping")


def _list(value: Any, where: str, field_: str) -> list[Any]:
    return shapes.array(value, field_, _fail(where))


def _strings(value: Any, where: str, field_: str) -> list[str]:
    return shapes.strings(value, field_, _fail(where))


def _template(path: Path, doc: dict[str, Any], line: int, strict_builtins: bool) -> Template:
    where = f"{path}:{line}"
    spec = _mapping(doc.get("spec"), where, "spec")
    crd = _mapping(spec.get("crd"), where, "spec.crd")
    crd_spec = _mapping(crd.get("spec"), where, "spec.crd.spec")
    kind = _mapping(crd_spec.get("names"), where, "spec.crd.spec.names").get("kind")
    if not isinstance(kind, str) or not kind:
        raise errors.PolicyLoadError(f"{where}: ConstraintTemplate needs spec.crd.spec.names.kind (a string)")
    targets = _list(spec.get("targets"), where, "spec.targets")
    chosen = [(i, t) for i, t in enumerate(targets) if isinstance(t, dict) and t.get("target") == TARGET]
    if not chosen:
        raise errors.PolicyLoadError(f"{where}: template {kind} has no spec.targets[] for target {TARGET}")
    index, target = chosen[0]
    source, libs = _sources(target, where, f"spec.targets[{index}]")
    if not isinstance(source, str) or not source.strip():
        raise errors.PolicyLoadError(f"{where}: template {kind} has no Rego in spec.targets[{index}].rego")
    pad = "\n" * doc["__rego_lines__"].get(index, 0)  # so errors name the YAML file's own line
    mods = [modules.parse(str(path), pad + source)]
    mods += [modules.parse(f"{path} (spec.targets[{index}].libs[{i}])", lib) for i, lib in enumerate(libs)]
    for module in mods:
        inventory_line = modules.uses_inventory(module)
        if inventory_line is not None:
            raise errors.PolicyLoadError(
                f"{module.name}:{inventory_line}: template {kind} reads data.inventory (Gatekeeper's "
                f"replicated cluster state), which portcullis does not support; rewrite the check "
                f"without it or keep this template in Gatekeeper"
            )
    if "violation" not in mods[0].rules:
        raise errors.PolicyLoadError(f"{where}: template {kind} defines no `violation` rule")
    entrypoint = f"{mods[0].package_path}/violation"
    compiled = rego.compile_modules(mods, strict_builtins=strict_builtins, extra_entrypoints=[entrypoint])
    return Template(kind, str(path), compiled, entrypoint)


def _sources(target: Mapping[str, Any], where: str, at: str) -> tuple[Any, list[str]]:
    if "rego" in target:
        return target.get("rego"), _strings(target.get("libs"), where, f"{at}.libs")
    for i, code in enumerate(_list(target.get("code"), where, f"{at}.code")):
        # Gatekeeper >= 3.13: code: [{engine: Rego, source: {rego: ..., libs: [...]}}]
        if isinstance(code, dict) and code.get("engine") == "Rego":
            source = _mapping(code.get("source"), where, f"{at}.code[{i}].source")
            return source.get("rego"), _strings(source.get("libs"), where, f"{at}.code[{i}].source.libs")
    return None, []


def constraint(where: str, doc: Mapping[str, Any], templates: Mapping[str, Template]) -> Constraint:
    """Decode one constraint; raise ``PolicyLoadError`` naming the field."""
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise errors.PolicyLoadError(f"{where}: constraint kind must be a template's kind (a string), not {kind!r}")
    name = _mapping(doc.get("metadata"), where, f"constraint {kind}: metadata").get("name")
    if not isinstance(name, str) or not name:
        raise errors.PolicyLoadError(f"{where}: constraint {kind} needs metadata.name (a string)")
    if kind not in templates:
        known = ", ".join(sorted(templates)) or "none loaded"
        raise errors.PolicyLoadError(
            f"{where}: constraint {name} has kind {kind!r} but no template defines it ({known})"
        )
    spec = _mapping(doc.get("spec"), where, f"constraint {name}: spec")
    action = spec.get("enforcementAction", "deny")
    if not isinstance(action, str) or action not in _ACTIONS:
        raise errors.PolicyLoadError(
            f"{where}: constraint {name}: spec.enforcementAction {action!r} (allowed: {', '.join(_ACTIONS)})"
        )
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise errors.PolicyLoadError(f"{where}: constraint {name}: spec.parameters must be a mapping")
    return Constraint(kind, name, where.rsplit(":", 1)[0], parameters, _match(where, name, spec), _ACTIONS[action])


_SCOPES = ("*", "Cluster", "Namespaced")


def _match(where: str, name: str, spec: Mapping[str, Any]) -> Match:
    at = f"constraint {name}: spec.match"
    match = _mapping(spec.get("match"), where, at)
    kinds = tuple(
        (
            frozenset(_strings(k.get("apiGroups"), where, f"{at}.kinds[{i}].apiGroups") or ["*"]),
            frozenset(_strings(k.get("kinds"), where, f"{at}.kinds[{i}].kinds") or ["*"]),
        )
        for i, k in enumerate(_list(match.get("kinds"), where, f"{at}.kinds"))
        if isinstance(k, dict)
    )
    scope = match.get("scope") or "*"
    if not isinstance(scope, str) or scope not in _SCOPES:
        raise errors.PolicyLoadError(f"{where}: {at}.scope {scope!r} (allowed: {', '.join(_SCOPES)})")
    match_name = match.get("name")
    if match_name is not None and not isinstance(match_name, str):
        raise errors.PolicyLoadError(f"{where}: {at}.name must be a string, not {shapes.type_name(match_name)}")
    return Match(
        kinds=kinds,
        namespaces=tuple(_strings(match.get("namespaces"), where, f"{at}.namespaces")),
        excluded_namespaces=tuple(_strings(match.get("excludedNamespaces"), where, f"{at}.excludedNamespaces")),
        label_selector=_selector(match.get("labelSelector"), where, f"{at}.labelSelector"),
        namespace_selector=_selector(match.get("namespaceSelector"), where, f"{at}.namespaceSelector"),
        scope=scope,
        name=match_name,
    )


_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _selector(value: Any, where: str, at: str) -> Mapping[str, Any] | None:
    """A label selector checked once here, so ``selects`` can read it without type checks."""
    if value is None:
        return None
    selector = _mapping(value, where, at)
    for key, label in _mapping(selector.get("matchLabels"), where, f"{at}.matchLabels").items():
        if not isinstance(label, str):
            raise errors.PolicyLoadError(
                f"{where}: {at}.matchLabels.{key} must be a string, not {shapes.type_name(label)}"
            )
    for i, expr in enumerate(_list(selector.get("matchExpressions"), where, f"{at}.matchExpressions")):
        e_at = f"{at}.matchExpressions[{i}]"
        expr = _mapping(expr, where, e_at)
        if not isinstance(expr.get("key"), str):
            raise errors.PolicyLoadError(f"{where}: {e_at}.key must be a string")
        operator = expr.get("operator")
        if not isinstance(operator, str) or operator not in _OPERATORS:
            raise errors.PolicyLoadError(f"{where}: {e_at}.operator {operator!r} (allowed: {', '.join(_OPERATORS)})")
        _strings(expr.get("values"), where, f"{e_at}.values")
    return selector


def reloadable(
    paths: Sequence[Path], *, strict_builtins: bool = False, probe: bool = True
) -> lifecycle.Reloadable[GatekeeperSet]:
    """Templates and constraints under ``paths``, recompiled when their files change (after a
    crash probe in a child process, see ``policy.probe``)."""

    def load_checked(p: Sequence[Path]) -> GatekeeperSet:
        if probe:
            crash_probe.check("gatekeeper", p, strict_builtins=strict_builtins)
        return load(p, strict_builtins=strict_builtins)

    return lifecycle.Reloadable(paths, load_checked, (".yaml", ".yml"))
