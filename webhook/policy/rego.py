"""The embedded Rego engine (regopy / rego-cpp): compile a policy directory into one bundle,
evaluate it per request, keep the last good bundle when a reload breaks. Used by
``checks.rego`` (admission and CI) and ``portcullis policy``.

Why a bundle: rego-cpp compiles a query in ~1 ms but runs a compiled plan in ~0.1 ms, so the
directory is compiled once (at start-up and on change) into a plan with one entrypoint that
returns every policy's ``deny``/``warn``, plus one entrypoint per policy to attribute an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from webhook import errors
from webhook.core import workloads
from webhook.core.decision import FailureMode, Mode
from webhook.policy import lifecycle, modules, native, plan, reads
from webhook.policy import probe as crash_probe
from webhook.policy.modules import RegoModule

log = logging.getLogger("portcullis.policy")
_WRAPPER_PACKAGE = "portcullis_bundle"
_RESULT = f"{_WRAPPER_PACKAGE}/result"
_OUTPUTS = ("deny", "warn")
_FOREIGN_DECISIONS = frozenset({"violation", "allow"})  # other engines' decision rules


@dataclass(frozen=True, slots=True)
class Policy:
    """One package that defines ``deny`` and/or ``warn``; id and mode come from ``# METADATA``."""

    id: str
    package: str
    file: str
    title: str = ""
    description: str = ""
    mode: Mode | None = None
    failure_mode: FailureMode | None = None
    # ``# METADATA custom.kinds``: the kinds this policy judges ("*": every kind); by default
    # the kinds that carry pod specs (what every policy saw before any kind reached Rego).
    kinds: frozenset[str] = workloads.WORKLOAD_KINDS

    def applies_to(self, kind: str) -> bool:
        return "*" in self.kinds or kind in self.kinds


@dataclass(frozen=True, slots=True)
class Item:
    """One element of a policy's ``deny`` or ``warn`` set."""

    msg: str
    check: str | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """What one policy said about one input (or why it could not say)."""

    policy: Policy
    deny: tuple[Item, ...] = ()
    warn: tuple[Item, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CompiledPolicies:
    """An immutable compiled bundle and the policies it answers for (swapped whole on reload)."""

    bundle: Any  # regopy.Bundle
    policies: tuple[Policy, ...]
    modules: tuple[RegoModule, ...]
    strict_builtins: bool = False
    input_reads: reads.InputReads | None = None  # what the policies can read of input (None: all)
    _interpreters: native.Interpreters = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_interpreters", native.Interpreters(self.strict_builtins))

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.policies)

    def applies_to(self, kind: str) -> bool:
        """Whether some policy judges ``kind`` (the bundle runs whole: each policy's own
        ``kinds`` is also visible to it as ``input.request.kind.kind``)."""
        return any(p.applies_to(kind) for p in self.policies)

    def kinds(self) -> frozenset[str]:
        """Every kind some policy judges (``*`` for any): the chart's webhook rules."""
        return frozenset().union(*(p.kinds for p in self.policies)) if self.policies else frozenset()

    def evaluate(self, document: Mapping[str, Any]) -> list[PolicyResult]:
        """Evaluate every policy against ``document`` (synchronous: run it in a worker thread).

        One query returns all results; when it fails, each policy is re-run alone so the error
        names the policy and the healthy ones still answer. An input the engine cannot take
        is every policy's error (each follows its own failure mode).
        """
        if not self.policies:
            return []
        interpreter = self._interpreters.take()
        try:
            native.set_input(interpreter, self.readable(document))
        except native.PolicyEvalError as exc:
            return [PolicyResult(p, error=f"policy {p.id} ({p.file}): {exc}") for p in self.policies]
        try:
            value = native.query(interpreter, self.bundle, _RESULT)
            results = [_result(p, v) for p, v in zip(self.policies, _as_list(value, len(self.policies)), strict=True)]
        except native.PolicyEvalError:
            return [self._evaluate_one(interpreter, i, p) for i, p in enumerate(self.policies)]
        self._interpreters.give_back(interpreter)  # only after a clean run
        return results

    def evaluate_policy(self, policy: Policy, document: Mapping[str, Any]) -> PolicyResult:
        """Evaluate one policy alone (the crash probe uses this to name a crashing policy)."""
        interpreter = native.interpreter(self.strict_builtins)
        try:
            native.set_input(interpreter, self.readable(document))
        except native.PolicyEvalError as exc:
            return PolicyResult(policy, error=f"policy {policy.id} ({policy.file}): {exc}")
        return self._evaluate_one(interpreter, self.policies.index(policy), policy)

    def readable(self, document: Mapping[str, Any]) -> Any:
        """``document`` cut to what some plan of the bundle can read (``policy.reads``)."""
        return document if self.input_reads is None else self.input_reads.prune(document)

    def query(self, entrypoint: str, document: Mapping[str, Any]) -> Any:
        """The value of one extra entrypoint for ``document`` (Gatekeeper's ``violation``);
        raise ``PolicyEvalError``. Reuses an idle interpreter like ``evaluate``."""
        interpreter = self._interpreters.take()
        native.set_input(interpreter, self.readable(document))
        value = native.query(interpreter, self.bundle, entrypoint)
        self._interpreters.give_back(interpreter)
        return value

    def _evaluate_one(self, interpreter: Any, index: int, policy: Policy) -> PolicyResult:
        try:
            return _result(policy, native.query(interpreter, self.bundle, f"{_WRAPPER_PACKAGE}/p{index}"))
        except native.PolicyEvalError as exc:
            return PolicyResult(policy, error=f"policy {policy.id} ({policy.file}): {exc}")


def _as_list(value: Any, n: int) -> list[Any]:
    if not isinstance(value, list) or len(value) != n:
        raise native.PolicyEvalError(f"bundle returned {type(value).__name__}, expected one entry per policy")
    return value


def _result(policy: Policy, value: Any) -> PolicyResult:
    try:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise native.PolicyEvalError(f"policy {policy.id} ({policy.file}): unexpected result {value!r:.80}")
        deny, warn = value
        return PolicyResult(policy, _items(policy, "deny", deny), _items(policy, "warn", warn))
    except native.PolicyEvalError as exc:
        return PolicyResult(policy, error=str(exc))


def result_of(policy: Policy, deny: Any, warn: Any) -> PolicyResult:
    """A result from raw ``deny``/``warn`` values (remote OPA, Gatekeeper), shape-checked."""
    return _result(policy, (deny, warn))


def _items(policy: Policy, name: str, value: Any) -> tuple[Item, ...]:
    where = f"policy {policy.id} ({policy.file}): `{name}`"
    if not isinstance(value, list):  # rego-cpp returns sets as JSON arrays
        raise native.PolicyEvalError(
            f"{where} must be a set of strings or {{msg, check, path}} objects, got {_kind(value)} "
            f"(write `{name} contains msg if {{ ... }}`)"
        )
    items: list[Item] = []
    for element in value:
        if isinstance(element, str):
            items.append(Item(_cut(element)))
        elif isinstance(element, dict) and isinstance(element.get("msg"), str):
            check, path = element.get("check"), element.get("path")
            if not isinstance(check, str | None) or not isinstance(path, str | None):
                raise native.PolicyEvalError(f"{where}: `check` and `path` must be strings, got {element!r}")
            items.append(Item(_cut(element["msg"]), _cut_optional(check), _cut_optional(path)))
        else:
            raise native.PolicyEvalError(
                f"{where} contains {_kind(element)} {orjson.dumps(element).decode()[:80]}; "
                f"each item must be a string or an object with a string `msg`"
            )
    items.sort(key=lambda i: (i.msg, i.check or "", i.path or ""))
    if len(items) > MAX_ITEMS:
        items[MAX_ITEMS:] = [Item(f"... and {len(items) - MAX_ITEMS} more `{name}` items of this policy")]
    return tuple(items)


# One policy's answer, bounded: a message that echoes the input (``sprintf("%v", [input])`` per
# container) or a rule per element of a large list made denials and audit records of many MB.
# The verdict still follows every item (a cut ``deny`` still denies).
MAX_TEXT = 4096  # characters of one msg, check or path
MAX_ITEMS = 500  # items of one policy's deny (or warn) kept


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}...[{len(text) - MAX_TEXT} characters cut]"


def _cut_optional(text: str | None) -> str | None:
    return None if text is None else _cut(text)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a set/array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


# --- compiling a directory ---------------------------------------------------------------------


def policies_of(mods: Sequence[RegoModule]) -> list[Policy]:
    """One policy per package that defines ``deny`` or ``warn`` (metadata of any of its files).

    A package with a decision rule of another engine's convention (Gatekeeper's ``violation``,
    an ``allow``) and neither of ours is said in a warning: such a file judges nothing here, and
    an author who meant it as a policy would otherwise admit everything unawares."""
    by_package: dict[str, list[RegoModule]] = {}
    foreign: dict[str, tuple[str, set[str]]] = {}
    for module in mods:
        if module.package.startswith(_WRAPPER_PACKAGE):
            continue
        if module.rules & set(_OUTPUTS):
            by_package.setdefault(module.package, []).append(module)
        elif module.rules & _FOREIGN_DECISIONS:
            where, names = foreign.setdefault(module.package, (module.name, set()))
            names |= module.rules & _FOREIGN_DECISIONS
    for package, (where, names) in sorted(foreign.items()):
        if package not in by_package:
            log.warning(
                "%s: package %s defines %s but neither deny nor warn: it is not a policy and judges nothing "
                "(Portcullis reads deny and warn; a Gatekeeper violation rule belongs in a ConstraintTemplate)",
                where, package, " and ".join(sorted(names)),
            )  # fmt: skip
    policies: list[Policy] = []
    seen: dict[str, str] = {}
    for package, members in sorted(by_package.items()):
        meta = next((m.metadata for m in members if m.metadata is not None), None)
        custom = meta.custom if meta else {}
        policy_id = str(custom.get("id") or package)
        where = members[0].name
        if policy_id in seen:
            raise errors.PolicyLoadError(f"{where}: policy id {policy_id!r} is also used by {seen[policy_id]}")
        seen[policy_id] = where
        policies.append(
            Policy(
                id=policy_id,
                package=package,
                file=where,
                title=meta.title if meta else "",
                description=meta.description if meta else "",
                mode=_enum(Mode, custom.get("mode"), where, "mode"),
                failure_mode=_enum(FailureMode, custom.get("failure_mode"), where, "failure_mode"),
                kinds=_kinds(custom.get("kinds"), where),
            )
        )
    return policies


def _kinds(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return workloads.WORKLOAD_KINDS
    if value == "*":
        return frozenset({"*"})
    if not isinstance(value, list) or not value or not all(isinstance(k, str) and k for k in value):
        raise errors.PolicyLoadError(f'{where}: # METADATA custom.kinds must be a list of kinds or "*", not {value!r}')
    return frozenset(value)


def _enum(kind: Any, value: Any, where: str, key: str) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise errors.PolicyLoadError(f"{where}: # METADATA custom.{key} is {value!r} (allowed: {allowed})") from None


def wrapper_source(policies: Sequence[Policy]) -> str:
    """A generated module: ``result`` lists [deny, warn] of every policy, ``p<i>`` one each.
    ``default`` makes an absent ``warn`` (or a ``deny`` with no match) an empty set."""
    lines = [f"package {_WRAPPER_PACKAGE}", "import rego.v1", ""]
    for i, policy in enumerate(policies):
        for out in _OUTPUTS:
            lines += [f"default {out}{i} := set()", f"{out}{i} := data.{policy.package}.{out}"]
        lines.append(f"p{i} := [deny{i}, warn{i}]")
    lines.append("result := [" + ", ".join(f"p{i}" for i in range(len(policies))) + "]")
    return "\n".join(lines) + "\n"


def compile_modules(
    mods: Sequence[RegoModule],
    *,
    strict_builtins: bool = False,
    extra_entrypoints: Sequence[str] = (),
    prune_input: bool = True,
) -> CompiledPolicies:
    """Compile modules into one bundle; raise ``PolicySyntaxError`` listing every problem.
    ``prune_input`` copies only the input paths the plans can read into the engine."""
    policies = policies_of(mods)
    problems = [*_reserved(mods), *modules.lint(mods, native.is_builtin)]
    if problems:
        raise modules.PolicySyntaxError("\n".join(problems))
    sources = [(m.name, m.source) for m in mods]
    sources.append((f"{_WRAPPER_PACKAGE}.rego", wrapper_source(policies)))
    entrypoints = [_RESULT, *(f"{_WRAPPER_PACKAGE}/p{i}" for i in range(len(policies))), *extra_entrypoints]
    try:
        bundle = native.build_bundle(sources, entrypoints)
    except native.CompileFailed as exc:
        if not exc.raw:
            hint = modules.explain_bracket_arguments(mods) if "bracket" in exc.text.lower() else ""
            raise modules.PolicySyntaxError(
                f"{_names(mods)}: the embedded Rego engine refused the modules: {exc.text or 'no message'}{hint}"
            ) from exc
        raise modules.PolicySyntaxError(modules.explain_compile_error(exc.raw, mods)) from exc
    readable = _input_reads(bundle) if prune_input else None
    return CompiledPolicies(bundle, tuple(policies), tuple(mods), strict_builtins, readable)


def _reserved(mods: Sequence[RegoModule]) -> list[str]:
    """Modules in the generated wrapper's package: they could redefine the result every policy
    is read from (a conflict then errors every policy; an agreeing value hides them)."""
    return [
        f"{m.name}:{m.package_line}:1: package `{m.package}` is reserved for the engine's generated bundle "
        f"(rename the package)"
        for m in mods
        if m.package == _WRAPPER_PACKAGE or m.package.startswith(f"{_WRAPPER_PACKAGE}.")
    ]


def _input_reads(bundle: Any) -> reads.InputReads | None:
    """What the compiled plans can read of the input; None (copy it all) when unknown."""
    data = native.bundle_bytes(bundle)
    if data is None:
        return None
    try:
        return reads.analyse(plan.read(data))
    except plan.PlanFormatError as exc:
        log.warning("copying the whole input to the engine: cannot read the compiled plan (%s)", exc)
        return None


def _names(mods: Sequence[RegoModule]) -> str:
    return ", ".join(m.name for m in mods) or "no modules"


def load_directory(paths: Sequence[Path], *, strict_builtins: bool = False) -> CompiledPolicies:
    """Read every non-test ``.rego`` file under ``paths`` and compile them together."""
    files = modules.discover(paths, tests=False)
    return compile_modules([modules.read(p) for p in files], strict_builtins=strict_builtins)


def engine(
    paths: Sequence[Path], *, strict_builtins: bool = False, probe: bool = True
) -> lifecycle.Reloadable[CompiledPolicies]:
    """A reloadable bundle of the Rego modules under ``paths``; with ``probe``, each version is
    first compiled and evaluated in a child process (``policy.probe``) so an engine crash
    rejects it instead of killing the webhook."""

    def load(p: Sequence[Path]) -> CompiledPolicies:
        mods = [modules.read(f) for f in modules.discover(p, tests=False)]  # read once: probe what is compiled
        if probe:
            sources = [(m.name, m.source) for m in mods]
            crash_probe.check("rego", p, strict_builtins=strict_builtins, sources=sources)
        return compile_modules(mods, strict_builtins=strict_builtins)

    return lifecycle.Reloadable(paths, load, (".rego",))
