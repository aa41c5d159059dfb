"""The embedded Rego engine (regopy / rego-cpp): compile a policy directory into one bundle,
evaluate it per request, keep the last good bundle when a reload breaks. Used by
``checks.rego`` (admission and CI) and ``portcullis policy``.

Why a bundle: rego-cpp compiles a query in ~1 ms but runs a compiled plan in ~0.1 ms, so the
directory is compiled once (at start-up and on change) into a plan with one entrypoint that
returns every policy's ``deny``/``warn``, plus one entrypoint per policy to attribute an error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import orjson
import regopy
from regopy import rego_shared

from webhook import errors
from webhook.admission.decision import FailureMode, Mode
from webhook.policy import modules
from webhook.policy.modules import RegoModule

log = logging.getLogger("portcullis.policy")

_WRAPPER_PACKAGE = "portcullis_bundle"
_RESULT = f"{_WRAPPER_PACKAGE}/result"
_OUTPUTS = ("deny", "warn")
T = TypeVar("T")


class PolicyEvalError(errors.PortcullisError):
    """A policy failed while evaluating (error, wrong output shape): handled by its failure mode."""


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

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.policies)

    def evaluate(self, document: Mapping[str, Any]) -> list[PolicyResult]:
        """Evaluate every policy against ``document`` (synchronous: run it in a worker thread).

        One query returns all results; when it fails, each policy is re-run alone so the error
        names the policy and the healthy ones still answer.
        """
        if not self.policies:
            return []
        interpreter = _interpreter(self.strict_builtins)
        interpreter.set_input(new_input(document))
        try:
            value = _query(interpreter, self.bundle, _RESULT)
            return [_result(p, v) for p, v in zip(self.policies, _as_list(value, len(self.policies)), strict=True)]
        except PolicyEvalError:
            pass
        return [self._evaluate_one(interpreter, i, p) for i, p in enumerate(self.policies)]

    def evaluate_policy(self, policy: Policy, document: Mapping[str, Any]) -> PolicyResult:
        """Evaluate one policy alone (the crash probe uses this to name a crashing policy)."""
        interpreter = _interpreter(self.strict_builtins)
        interpreter.set_input(new_input(document))
        return self._evaluate_one(interpreter, self.policies.index(policy), policy)

    def _evaluate_one(self, interpreter: Any, index: int, policy: Policy) -> PolicyResult:
        try:
            return _result(policy, _query(interpreter, self.bundle, f"{_WRAPPER_PACKAGE}/p{index}"))
        except PolicyEvalError as exc:
            return PolicyResult(policy, error=f"policy {policy.id} ({policy.file}): {exc}")


def _as_list(value: Any, n: int) -> list[Any]:
    if not isinstance(value, list) or len(value) != n:
        raise PolicyEvalError(f"bundle returned {type(value).__name__}, expected one entry per policy")
    return value


def _result(policy: Policy, value: Any) -> PolicyResult:
    try:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise PolicyEvalError(f"policy {policy.id} ({policy.file}): unexpected result {value!r:.80}")
        deny, warn = value
        return PolicyResult(policy, _items(policy, "deny", deny), _items(policy, "warn", warn))
    except PolicyEvalError as exc:
        return PolicyResult(policy, error=str(exc))


def result_of(policy: Policy, deny: Any, warn: Any) -> PolicyResult:
    """A result from raw ``deny``/``warn`` values (remote OPA, Gatekeeper), shape-checked."""
    return _result(policy, (deny, warn))


def _items(policy: Policy, name: str, value: Any) -> tuple[Item, ...]:
    where = f"policy {policy.id} ({policy.file}): `{name}`"
    if not isinstance(value, list):  # rego-cpp returns sets as JSON arrays
        raise PolicyEvalError(
            f"{where} must be a set of strings or {{msg, check, path}} objects, got {_kind(value)} "
            f"(write `{name} contains msg if {{ ... }}`)"
        )
    items: list[Item] = []
    for element in value:
        if isinstance(element, str):
            items.append(Item(element))
        elif isinstance(element, dict) and isinstance(element.get("msg"), str):
            check, path = element.get("check"), element.get("path")
            if not isinstance(check, str | None) or not isinstance(path, str | None):
                raise PolicyEvalError(f"{where}: `check` and `path` must be strings, got {element!r}")
            items.append(Item(element["msg"], check, path))
        else:
            raise PolicyEvalError(
                f"{where} contains {_kind(element)} {orjson.dumps(element).decode()[:80]}; "
                f"each item must be a string or an object with a string `msg`"
            )
    return tuple(sorted(items, key=lambda i: (i.msg, i.check or "", i.path or "")))


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a set/array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


# --- the regopy boundary ----------------------------------------------------------------------


def new_input(document: Mapping[str, Any]) -> Any:
    """An engine input handle for ``document`` (the costly part of a query: a copy into rego-cpp)."""
    return regopy.Input(document)


def _interpreter(strict_builtins: bool = False) -> Any:
    interpreter = regopy.Interpreter()
    interpreter.log_level = regopy.LogLevel.NONE
    if strict_builtins:
        interpreter.strict_built_in_errors = True
    return interpreter


def _query(interpreter: Any, bundle: Any, entrypoint: str) -> Any:
    """Run one entrypoint; return its value (``None`` when undefined) or raise PolicyEvalError.

    Uses the C API directly: regopy's ``Output`` json-decodes the result in its constructor and
    raises ``JSONDecodeError`` on the error forms rego-cpp returns, losing the message.
    """
    try:
        output = rego_shared.rego_bundle_query_entrypoint(interpreter._impl, bundle._impl, entrypoint)
    except regopy.RegoError as exc:
        raise PolicyEvalError(f"evaluation failed: {exc}") from exc
    try:
        if not rego_shared.rego_output_ok(output):
            raise PolicyEvalError(_error_text(rego_shared.rego_output_node(output)))
        text = rego_shared.rego_output_string(output)
        if text == "undefined":
            return None
        if text.startswith("(error"):
            raise PolicyEvalError(modules.explain_compile_error(text, ()))
        # rego-cpp's JSON text does not escape quotes inside strings, so read the value tree.
        terms = rego_shared.rego.regoOutputExpressionsAtIndex(output, 0)
        if not terms or rego_shared.rego.regoNodeSize(terms) < 1:
            raise PolicyEvalError(f"unexpected engine output: {text[:200]}")
        return _value(rego_shared.rego_node_get(terms, 0), 0)
    finally:
        rego_shared.rego.regoFreeOutput(output)


_TERM, _SCALAR, _ARRAY, _SET, _OBJECT = 1002, 1003, 1004, 1005, 1006
_INT, _FLOAT, _STRING, _TRUE, _FALSE, _BOOLEAN, _NULL = 1008, 1009, 1010, 1011, 1012, 1111, 1013
_MAX_NESTING = 64


def _string(raw: str) -> str:
    # A string literal's node keeps its JSON quotes; a computed string's node does not.
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
        if isinstance(decoded, str):
            return decoded
    return raw


def _value(node: Any, depth: int) -> Any:
    """A Python value from a rego-cpp value node (exact strings, unlike the JSON text)."""
    if depth > _MAX_NESTING:
        raise PolicyEvalError("result nested too deeply")
    lib = rego_shared.rego
    kind = lib.regoNodeType(node)
    while kind in (_TERM, _SCALAR):
        node = rego_shared.rego_node_get(node, 0)
        kind = lib.regoNodeType(node)
    if kind == _STRING:
        return _string(rego_shared.rego_node_value(node))
    if kind in (_ARRAY, _SET):
        return [_value(rego_shared.rego_node_get(node, i), depth + 1) for i in range(lib.regoNodeSize(node))]
    if kind == _OBJECT:
        out: dict[str, Any] = {}
        for i in range(lib.regoNodeSize(node)):
            item = rego_shared.rego_node_get(node, i)
            key = _value(rego_shared.rego_node_get(item, 0), depth + 1)
            out[key if isinstance(key, str) else orjson.dumps(key).decode()] = _value(
                rego_shared.rego_node_get(item, 1), depth + 1
            )
        return out
    if kind == _INT:
        return int(rego_shared.rego_node_value(node))
    if kind == _FLOAT:
        return float(rego_shared.rego_node_value(node))
    if kind in (_TRUE, _FALSE, _BOOLEAN):
        return kind == _TRUE or (kind == _BOOLEAN and rego_shared.rego_node_value(node) == "true")
    if kind == _NULL:
        return None
    raise PolicyEvalError(f"unexpected value kind {kind} in engine output")


_ERRORMSG_KIND = 1801
_ERRORCODE_KIND = 1803


def _error_text(node: Any) -> str:
    """Collect ``errormsg`` / ``errorcode`` leaves from rego-cpp's error tree."""
    found: dict[int, list[str]] = {_ERRORMSG_KIND: [], _ERRORCODE_KIND: []}
    stack = [node]
    while stack and len(stack) < 10_000:
        current = stack.pop()
        kind = rego_shared.rego.regoNodeType(current)
        if kind in found:
            with contextlib.suppress(regopy.RegoError):
                found[kind].append(rego_shared.rego_node_value(current))
            continue
        size = rego_shared.rego.regoNodeSize(current)
        stack.extend(rego_shared.rego_node_get(current, i) for i in reversed(range(size)))
    message = "; ".join(m for m in found[_ERRORMSG_KIND] if m) or "evaluation error"
    codes = ", ".join(c for c in found[_ERRORCODE_KIND] if c)
    return f"{message} ({codes})" if codes else message


@functools.cache
def is_builtin(name: str) -> bool:
    """Whether the embedded engine knows the built-in function ``name`` (asked at load time)."""
    return bool(_interpreter().is_builtin(name))


# --- compiling a directory ---------------------------------------------------------------------


def policies_of(mods: Sequence[RegoModule]) -> list[Policy]:
    """One policy per package that defines ``deny`` or ``warn`` (metadata of any of its files)."""
    by_package: dict[str, list[RegoModule]] = {}
    for module in mods:
        if not module.package.startswith(_WRAPPER_PACKAGE) and module.rules & set(_OUTPUTS):
            by_package.setdefault(module.package, []).append(module)
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
            )
        )
    return policies


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
) -> CompiledPolicies:
    """Compile modules into one bundle; raise ``PolicySyntaxError`` listing every problem."""
    policies = policies_of(mods)
    problems = modules.lint(mods, is_builtin)
    if problems:
        raise modules.PolicySyntaxError("\n".join(problems))
    builder = _interpreter()
    try:
        for module in mods:
            builder.add_module(module.name, module.source)
        builder.add_module(f"{_WRAPPER_PACKAGE}.rego", wrapper_source(policies))
        entrypoints = [_RESULT, *(f"{_WRAPPER_PACKAGE}/p{i}" for i in range(len(policies)))]
        bundle = builder.build(None, [*entrypoints, *extra_entrypoints])
    except regopy.RegoError as exc:
        raise modules.PolicySyntaxError(modules.explain_compile_error(str(exc), mods)) from exc
    if not bundle.ok():
        raise modules.PolicySyntaxError("the Rego compiler could not build a bundle from " + _names(mods))
    return CompiledPolicies(bundle, tuple(policies), tuple(mods), strict_builtins)


def _names(mods: Sequence[RegoModule]) -> str:
    return ", ".join(m.name for m in mods) or "no modules"


def load_directory(paths: Sequence[Path], *, strict_builtins: bool = False) -> CompiledPolicies:
    """Read every non-test ``.rego`` file under ``paths`` and compile them together."""
    files = modules.discover(paths, tests=False)
    return compile_modules([modules.read(p) for p in files], strict_builtins=strict_builtins)


# --- the running engine: last good bundle, reload, bounded evaluation --------------------------


@dataclass(slots=True)
class LoadStatus:
    """What /readyz and operators see: which policies run and why the last reload failed."""

    loaded: bool = False
    policies: tuple[str, ...] = ()
    last_error: str | None = None
    reloads: int = 0


class _Loaded(Protocol):
    @property
    def policy_ids(self) -> tuple[str, ...]: ...


L = TypeVar("L", bound=_Loaded)


class Reloadable(Generic[L]):
    """Something compiled from files (a Rego bundle, Gatekeeper templates) that is recompiled
    when the files change, and keeps the last good version when the new one is broken."""

    def __init__(self, paths: Sequence[Path], load: Callable[[Sequence[Path]], L], suffixes: tuple[str, ...]):
        self.paths = tuple(paths)
        self._load = load
        self._suffixes = suffixes
        self.status = LoadStatus()
        self.current: L | None = None
        self._fingerprint: tuple[tuple[str, int, int], ...] | None = None

    def load(self) -> L:
        """Compile now; raise ``PolicyLoadError`` (start-up fails loudly on a broken policy)."""
        fp = fingerprint(self.paths, self._suffixes)
        loaded = self._load(self.paths)
        self._install(loaded, fp)
        return loaded

    def reload_if_changed(self) -> bool:
        """Recompile when a file changed; on error keep the last good version and record why."""
        fp = fingerprint(self.paths, self._suffixes)
        if fp == self._fingerprint:
            return False
        try:
            loaded = self._load(self.paths)
        except errors.PolicyLoadError as exc:
            if self.status.last_error != str(exc):
                log.error("policy reload failed, keeping the last good version: %s", exc)
            self.status.last_error = str(exc)
            self._fingerprint = fp
            return False
        self._install(loaded, fp)
        log.info("policies reloaded: %s", ", ".join(self.status.policies) or "none")
        return True

    def _install(self, loaded: L, fp: tuple[tuple[str, int, int], ...]) -> None:
        self.current = loaded  # one reference swap: a request in flight keeps the old version
        self._fingerprint = fp
        self.status.loaded = True
        self.status.policies = loaded.policy_ids
        self.status.last_error = None
        self.status.reloads += 1


def fingerprint(paths: Sequence[Path], suffixes: tuple[str, ...] = (".rego",)) -> tuple[tuple[str, int, int], ...]:
    """What changes when a policy file changes (path, size, mtime): cheap enough to poll."""
    out: list[tuple[str, int, int]] = []
    for root in paths:
        candidates = [root] if root.is_file() else sorted(root.rglob("*")) if root.is_dir() else []
        for path in candidates:
            if not path.name.endswith(suffixes):
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            out.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(out)


class BoundedPool:
    """Worker threads for evaluations that must not exceed a time bound.

    rego-cpp releases the GIL, so evaluation never blocks the event loop; it also cannot be
    interrupted, so a thread that overran is counted as ``runaway`` until it finishes and
    ``ready()`` turns false while no worker is free.
    """

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self.runaway = 0
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="rego")

    def ready(self) -> bool:
        return self.runaway < self.workers

    async def run(self, fn: Callable[[], T], bound: float, what: str) -> T:
        """Run ``fn`` on a worker; raise ``PolicyTimeout`` naming ``what`` after ``bound`` s."""
        future = self._pool.submit(fn)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=bound)
        except TimeoutError:
            self._count_runaway(future)
            raise PolicyTimeout(
                f"Rego evaluation exceeded {bound * 1000:.0f} ms ({what}); look for comprehensions "
                f"or numbers.range that grow with the input"
            ) from None

    def _count_runaway(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self.runaway += 1

        def done(_: concurrent.futures.Future[Any]) -> None:
            with self._lock:
                self.runaway -= 1

        future.add_done_callback(done)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class PolicyTimeout(errors.UpstreamError):
    """Evaluation overran its bound; the policies' failure mode decides."""


def engine(paths: Sequence[Path], *, strict_builtins: bool = False, probe: bool = True) -> Reloadable[CompiledPolicies]:
    """A reloadable bundle of the Rego modules under ``paths``; with ``probe``, each version is
    first compiled and evaluated in a child process (``policy.probe``) so an engine crash
    rejects it instead of killing the webhook."""

    def load(p: Sequence[Path]) -> CompiledPolicies:
        if probe:
            from webhook.policy import probe as crash_probe  # the probe imports this module

            crash_probe.check("rego", p, strict_builtins=strict_builtins)
        return load_directory(p, strict_builtins=strict_builtins)

    return Reloadable(paths, load, (".rego",))
