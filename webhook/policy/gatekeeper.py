"""Gatekeeper compatibility: load ConstraintTemplates and their constraints from YAML, compile each
template's Rego (``spec.targets[].rego`` + ``libs``) with the embedded engine, and evaluate a
review the way Gatekeeper does: ``input.review`` is the admission request, ``input.parameters``
the constraint's ``spec.parameters``, results come from ``violation[{"msg": msg}]``.

Used by ``checks.rego`` and ``portcullis policy test`` (gator-style suites). A referential
template reads Gatekeeper's replicated cluster state (``data.inventory``); it is passed with each
evaluation (a suite case's ``inventory`` objects; at admission, what the sync config lists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
VALIDATION_POINT = "validation.gatekeeper.sh"  # Gatekeeper's admission webhook (ours)
GATOR_POINT = "gator.gatekeeper.sh"  # ``gator verify`` (``portcullis policy test``)
# Where a referential template's ``data.inventory`` is read from (see ``modules.inventory_to_input``).
INVENTORY_INPUT = "__portcullis_inventory__"
_ACTIONS = {"deny": Mode.ENFORCE, "warn": Mode.WARN, "dryrun": Mode.AUDIT}


@dataclass(frozen=True, slots=True)
class Template:
    """One ConstraintTemplate, compiled."""

    kind: str  # the constraint kind it defines, e.g. K8sRequiredLabels
    file: str
    compiled: rego.CompiledPolicies
    entrypoint: str  # "<package path>/violation"
    referential: bool = False  # reads data.inventory (passed as ``input.__portcullis_inventory__``)


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

    def may_match_kind(self, kind: str) -> bool:
        """Whether some object of ``kind`` (any group) can match (for which kinds reach the webhook)."""
        return not self.kinds or any(_any_of(kinds, kind) for _, kinds in self.kinds)

    def matches(self, review: Mapping[str, Any], namespace: Mapping[str, Any] | None) -> bool:
        """Whether the review falls under this constraint, as Gatekeeper decides it: the object
        or (on UPDATE/DELETE) the old object matches every criterion. ``namespace`` is the
        Namespace object of a namespaced review when known (cache, inventory); raise
        ``MatchError`` where Gatekeeper errors (a namespaceSelector and no Namespace)."""
        kind = review.get("kind") or {}
        group, kind_name = str(kind.get("group") or ""), str(kind.get("kind") or "")
        if self.kinds and not any(_any_of(k, kind_name) and _any_of(g, group) for g, k in self.kinds):
            return False
        candidates = [o for o in (review.get("object"), review.get("oldObject")) if isinstance(o, Mapping) and o]
        if not candidates:
            raise MatchError("neither object nor old object are defined")
        is_namespace = kind_name == "Namespace" and group == ""
        return any(self._matches_object(obj, is_namespace, namespace) for obj in candidates)

    def _matches_object(self, obj: Mapping[str, Any], is_namespace: bool, namespace: Mapping[str, Any] | None) -> bool:
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        assert isinstance(metadata, Mapping)
        own_namespace = _text(metadata.get("namespace"))
        has_namespace = bool(own_namespace) or namespace is not None
        if self.scope == "Cluster" and not (is_namespace or not has_namespace):
            return False
        if self.scope == "Namespaced" and not (not is_namespace and has_namespace):
            return False
        # The namespace the namespace rules look at: a Namespace's own name, the known Namespace,
        # the object's own. A cluster-scoped object has none, and passes both rules (Gatekeeper).
        if is_namespace:
            ns_name: str | None = _text(metadata.get("name"))
        elif namespace is not None:
            ns_name = _text((namespace.get("metadata") or {}).get("name"))
        else:
            ns_name = own_namespace or None
        if ns_name is not None:
            if self.namespaces and not any(wildcard(p, ns_name) for p in self.namespaces):
                return False
            if any(wildcard(p, ns_name) for p in self.excluded_namespaces):
                return False
        labels = _labels(metadata)
        if self.label_selector is not None and not selects(self.label_selector, labels):
            return False
        if self.namespace_selector is not None and (is_namespace or namespace is not None or own_namespace):
            if is_namespace:
                ns_labels = labels
            elif namespace is None:
                raise MatchError("namespace selector for a namespace-scoped object but its Namespace is unknown")
            else:
                ns_labels = _labels(namespace.get("metadata") or {})
            if not selects(self.namespace_selector, ns_labels):
                return False
        if self.name is not None:
            name, generate = _text(metadata.get("name")), _text(metadata.get("generateName"))
            if not (wildcard(self.name, name) or wildcard_generate_name(self.name, generate)):
                return False
        return True


class MatchError(errors.PortcullisError):
    """Gatekeeper cannot decide whether a constraint matches (it reports an error)."""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _labels(metadata: Any) -> Mapping[str, str]:
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    return {k: v for k, v in labels.items() if isinstance(v, str)} if isinstance(labels, Mapping) else {}


def wildcard(pattern: str, candidate: str) -> bool:
    """Gatekeeper's wildcard: ``*x*`` contains, ``*x`` suffix, ``x*`` prefix, else equal.
    Any other ``*`` (and ``?``, ``[``) is a literal character, unlike a shell glob."""
    if len(pattern) >= 2 and pattern.startswith("*") and pattern.endswith("*"):
        return pattern[1:-1] in candidate
    if pattern.startswith("*"):
        return candidate.endswith(pattern[1:])
    if pattern.endswith("*"):
        return candidate.startswith(pattern[:-1])
    return pattern == candidate


def wildcard_generate_name(pattern: str, generate_name: str) -> bool:
    """``match.name`` against ``metadata.generateName`` (Gatekeeper: prefix or contains forms)."""
    if not generate_name:
        return False
    if len(pattern) >= 2 and pattern.startswith("*") and pattern.endswith("*"):
        return pattern[1:-1] in generate_name
    if pattern.endswith("*"):
        return generate_name.startswith(pattern[:-1])
    return False


@dataclass(frozen=True, slots=True)
class Constraint:
    """One constraint: which template, which parameters, what it matches, what it does."""

    kind: str
    name: str
    file: str
    parameters: Mapping[str, Any]
    match: Match
    mode: Mode  # at the webhook (Gatekeeper's validation enforcement point)
    # ``scoped`` actions: enforcement point -> mode; a point the constraint does not name is absent.
    points: Mapping[str, Mode] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def policy(self) -> Policy:
        """The constraint as a policy of the rego check (results, failure mode, messages)."""
        return Policy(id=self.id, package=self.kind, file=self.file, mode=self.mode)

    def enforced_at(self, point: str) -> bool:
        return not self.points or point in self.points or "*" in self.points


@dataclass(frozen=True, slots=True)
class GatekeeperSet:
    """Templates and constraints loaded together (swapped whole on reload)."""

    templates: Mapping[str, Template]
    constraints: tuple[Constraint, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.constraints)

    def may_match_kind(self, kind: str) -> bool:
        """Whether some webhook-enforced constraint can select an object of ``kind``."""
        return any(c.match.may_match_kind(kind) for c in self.constraints if c.enforced_at(VALIDATION_POINT))

    def matched_kinds(self) -> list[tuple[list[str], list[str]]]:
        """(apiGroups, kinds) the webhook-enforced constraints select (the chart's rules)."""
        out: list[tuple[list[str], list[str]]] = []
        for c in self.constraints:
            if not c.enforced_at(VALIDATION_POINT):
                continue
            for groups, kinds in c.match.kinds or ((frozenset({"*"}), frozenset({"*"})),):
                out.append((sorted(groups), sorted(kinds)))
        return out

    def matching(
        self, review: Mapping[str, Any], namespace: Mapping[str, Any] | None, point: str = VALIDATION_POINT
    ) -> list[Constraint]:
        """The constraints enforced at ``point`` whose match selects the review. A constraint
        whose match cannot be decided is kept: its evaluation then reports the error."""
        out: list[Constraint] = []
        for constraint in self.constraints:
            if not constraint.enforced_at(point):
                continue
            try:
                if constraint.match.matches(review, namespace):
                    out.append(constraint)
            except MatchError:
                out.append(constraint)
        return out

    def evaluate(
        self, review: Mapping[str, Any], namespace: Mapping[str, Any] | None = None, inventory: Any = None
    ) -> list[PolicyResult]:
        """Every matching constraint's violations, in this process (tests, the crash probe).
        The webhook evaluates in killable workers instead (``checks.rego``)."""
        return [self.evaluate_one(c, review, inventory) for c in self.matching(review, namespace)]

    def evaluate_one(self, constraint: Constraint, review: Mapping[str, Any], inventory: Any = None) -> PolicyResult:
        """One constraint in this process (``policy test`` and the crash probe; the webhook uses workers)."""
        template = self.templates[constraint.kind]
        result = evaluate_template(template, constraint.id, constraint.parameters, review, inventory)
        return PolicyResult(constraint.policy, result.deny, result.warn, result.error)


def evaluate_template(
    template: Template, constraint_id: str, parameters: Any, review: Any, inventory: Any = None
) -> PolicyResult:
    """One constraint's ``violation`` set for ``review`` (synchronous; a policy worker runs it)."""
    policy = Policy(id=constraint_id, package=template.kind, file=template.file)
    document: dict[str, Any] = {"review": review, "parameters": parameters}
    if template.referential:
        document[INVENTORY_INPUT] = inventory if inventory is not None else {}
    try:
        value = template.compiled.query(template.entrypoint, document)
    except native.PolicyEvalError as exc:
        return PolicyResult(policy, error=f"constraint {constraint_id} ({template.file}): {exc}")
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
    return not allowed or "*" in allowed or value in allowed


# --- loading ------------------------------------------------------------------------------------


def load(paths: Sequence[Path], *, strict_builtins: bool = False) -> GatekeeperSet:
    """Read every YAML file under ``paths``; raise ``PolicyLoadError`` listing every problem."""
    return load_sources(read_sources(paths), strict_builtins=strict_builtins)


def read_sources(paths: Sequence[Path]) -> list[tuple[str, str]]:
    """``(path, text)`` of every YAML file under ``paths``, read once: the crash probe and the
    compile then see the same bytes even if a file changes between the two."""
    sources = []
    for path in _yaml_files(paths):
        try:
            sources.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.PolicyLoadError(f"{path}: cannot read: {exc}") from exc
    return sources


def load_sources(sources: Sequence[tuple[str, str]], *, strict_builtins: bool = False) -> GatekeeperSet:
    """Templates and constraints from ``(path, text)`` pairs (``read_sources``); raise
    ``PolicyLoadError`` listing every problem."""
    templates: dict[str, Template] = {}
    raw_constraints: list[tuple[str, Mapping[str, Any]]] = []
    problems: list[str] = []
    for name, text in sources:
        path = Path(name)
        for doc, line in _documents(path, text):
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
            files.update(modules.files_under(path, (".yaml", ".yml")))
        else:
            raise errors.PolicyLoadError(f"{path}: no such Gatekeeper file or directory")
    return sorted(files)


def _documents(path: Path, text: str) -> list[tuple[dict[str, Any], int]]:
    """Each mapping document of a YAML file's text with its first line (for messages)."""
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
    referential = any(modules.uses_inventory(m) is not None for m in mods)
    if referential:  # data.inventory comes with each evaluation (see ``evaluate_template``)
        mods = [modules.parse(m.name, modules.inventory_to_input(m.source, INVENTORY_INPUT)) for m in mods]
    if "violation" not in mods[0].rules:
        raise errors.PolicyLoadError(f"{where}: template {kind} defines no `violation` rule")
    entrypoint = f"{mods[0].package_path}/violation"
    compiled = rego.compile_modules(mods, strict_builtins=strict_builtins, extra_entrypoints=[entrypoint])
    return Template(kind, str(path), compiled, entrypoint, referential)


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
    if not isinstance(action, str) or action not in (*_ACTIONS, "scoped"):
        raise errors.PolicyLoadError(
            f"{where}: constraint {name}: spec.enforcementAction {action!r} (allowed: {', '.join(_ACTIONS)}, scoped)"
        )
    points: dict[str, Mode] = {}
    if action == "scoped":
        points = _scoped(where, name, spec)
        mode = _strictest(points.get(VALIDATION_POINT), points.get("*"))
    else:
        mode = _ACTIONS[action]
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise errors.PolicyLoadError(f"{where}: constraint {name}: spec.parameters must be a mapping")
    return Constraint(
        kind, name, where.rsplit(":", 1)[0], parameters, _match(where, name, spec), mode or Mode.ENFORCE, points
    )


def _scoped(where: str, name: str, spec: Mapping[str, Any]) -> dict[str, Mode]:
    """``scopedEnforcementActions``: enforcement point -> the strictest action that names it."""
    at = f"constraint {name}: spec.scopedEnforcementActions"
    entries = _list(spec.get("scopedEnforcementActions"), where, at)
    if not entries:
        raise errors.PolicyLoadError(f"{where}: {at} must list actions when enforcementAction is scoped")
    points: dict[str, Mode] = {}
    for i, entry in enumerate(entries):
        entry = _mapping(entry, where, f"{at}[{i}]")
        action = entry.get("action")
        if not isinstance(action, str) or action not in _ACTIONS:
            raise errors.PolicyLoadError(f"{where}: {at}[{i}].action {action!r} (allowed: {', '.join(_ACTIONS)})")
        for j, point in enumerate(_list(entry.get("enforcementPoints"), where, f"{at}[{i}].enforcementPoints")):
            point_name = _mapping(point, where, f"{at}[{i}].enforcementPoints[{j}]").get("name")
            if not isinstance(point_name, str) or not point_name:
                raise errors.PolicyLoadError(f"{where}: {at}[{i}].enforcementPoints[{j}].name must be a string")
            points[point_name] = _strictest(points.get(point_name), _ACTIONS[action]) or _ACTIONS[action]
    return points


_STRICTNESS = {Mode.ENFORCE: 3, Mode.WARN: 2, Mode.AUDIT: 1}


def _strictest(*modes: Mode | None) -> Mode | None:
    present = [m for m in modes if m is not None]
    return max(present, key=lambda m: _STRICTNESS.get(m, 0)) if present else None


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
        sources = read_sources(p)  # read once: probe what is compiled
        if probe:
            crash_probe.check("gatekeeper", p, strict_builtins=strict_builtins, sources=sources)
        return load_sources(sources, strict_builtins=strict_builtins)

    return lifecycle.Reloadable(paths, load_checked, (".yaml", ".yml"))
