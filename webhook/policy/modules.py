"""Rego source files before compilation (read stage of the policy engine): discovery, package and
``# METADATA`` annotations, compatibility rewrites for the embedded engine, static lint, and
file:line:column for the compiler's errors. Used by ``policy.rego``, ``policy.gatekeeper`` and
``policy.testing``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from webhook import errors


class PolicySyntaxError(errors.PolicyLoadError):
    """One or more Rego modules cannot be compiled; the message names file, line and error."""


@dataclass(frozen=True, slots=True)
class Metadata:
    """The OPA rich metadata of a module (``# METADATA`` block, package or first rule scope)."""

    title: str = ""
    description: str = ""
    custom: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RegoModule:
    """One Rego file as the engine will compile it."""

    name: str  # the display path: used in every error message and as the compiler's module name
    source: str  # after compatibility rewrites (line numbers preserved)
    package: str  # e.g. "portcullis.gpu.limits"
    metadata: Metadata | None
    rules: frozenset[str]  # names of rules defined at top level
    tests: tuple[str, ...]  # ``test_`` rules, in file order

    @property
    def package_line(self) -> int:
        """The line of the ``package`` declaration (1 when it cannot be found)."""
        match = _PACKAGE.search(_mask(self.source))
        return self.source.count("\n", 0, match.start()) + 1 if match else 1

    @property
    def package_path(self) -> str:
        """The package as an entrypoint path (``portcullis/gpu/limits``)."""
        return self.package.replace(".", "/")


_PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)\s*$", re.MULTILINE)
_RULE_HEAD = re.compile(r"^(?:default\s+)?([A-Za-z_]\w*)\b", re.MULTILINE)
_TEST_HEAD = re.compile(r"^(test_\w+)\b", re.MULTILINE)
_KEYWORDS = frozenset({"package", "import", "default", "else", "not", "some", "every", "with", "as"})


def files_under(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under the directory ``root`` ending in ``suffixes``, sorted, skipping every name
    (file or directory) that starts with a dot below ``root``.

    Why: kubelet mounts a ConfigMap as one symlink per key through ``..data`` into a hidden
    ``..<timestamp>`` directory holding the real files; reading that directory too compiled every
    policy twice (a ``default`` rule or a Gatekeeper template then refused to load). Editors'
    hidden lock and backup files are skipped by the same rule."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.name.endswith(suffixes)
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.is_file()
    )


def discover(paths: Iterable[Path], *, tests: bool) -> list[Path]:
    """Every ``.rego`` file under ``paths`` (sorted; ``*_test.rego`` only when ``tests``)."""
    found: set[Path] = set()
    for path in paths:
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(files_under(path, (".rego",)))
        else:
            raise errors.PolicyLoadError(f"{path}: no such policy file or directory")
    return sorted(p for p in found if tests or not p.name.endswith("_test.rego"))


def read(path: Path, name: str | None = None) -> RegoModule:
    """Read and parse one file; raise ``PolicyLoadError`` when unreadable or without a package."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not Rego
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.PolicyLoadError(f"{path}: cannot read policy: {exc}") from exc
    return parse(name or str(path), text)


def parse(name: str, text: str) -> RegoModule:
    """Parse what the loader needs from a module's text (the compiler checks the rest)."""
    source = compat(text)
    masked = _mask(source)
    package = _PACKAGE.search(masked)
    if package is None:
        raise PolicySyntaxError(f"{name}:1:1: no `package` declaration (start the module with `package <name>`)")
    rules = frozenset(m.group(1) for m in _RULE_HEAD.finditer(masked) if m.group(1) not in _KEYWORDS)
    tests = tuple(dict.fromkeys(m.group(1) for m in _TEST_HEAD.finditer(masked)))
    return RegoModule(name, source, package.group(1), _metadata(name, text), rules, tests)


# --- compatibility: what OPA accepts in Rego v0 but rego-cpp reads differently -------------

_V0_PARTIAL_SET = re.compile(r"^([A-Za-z_]\w*)\[", re.MULTILINE)
_DEPRECATED = {"re_match": "regex.match"}
_DEPRECATED_CALL = re.compile(r"(?<![\w.])(re_match)(\s*\()")


def compat(text: str) -> str:
    """Rewrite Rego v0 partial-set heads (``deny[msg] {``) to v1 (``deny contains msg if {``)
    and deprecated built-ins OPA still knows (``re_match``). rego-cpp reads a v0 head as a
    partial *object* mapping each message to ``true``, which is not what Gatekeeper templates
    mean. Rewrites stay on the same line, so reported line numbers still match the file."""
    masked = _mask(text)
    pieces: list[str] = []
    last = 0
    for match in _V0_PARTIAL_SET.finditer(masked):
        close = _matching(masked, match.end() - 1)
        if close is None:
            continue
        rest = close + 1
        while rest < len(masked) and masked[rest] in " \t":
            rest += 1
        if rest >= len(masked) or masked[rest] != "{":
            continue  # `name[key] = value {` (partial object) or `name[x] if`: leave alone
        pieces.append(text[last : match.start()])
        pieces.append(f"{match.group(1)} contains {text[match.end() : close]} if ")
        last = rest
    pieces.append(text[last:])
    out = "".join(pieces)
    out = _DEPRECATED_CALL.sub(lambda m: _DEPRECATED[m.group(1)] + m.group(2), out)
    return _hoist_wildcard_arguments(_separate_parenthesised_lines(out))


_PAREN_LINE = re.compile(r"([\w\])])([ \t]*)(\n[ \t]*\()")


def _separate_parenthesised_lines(text: str) -> str:
    """End a body line with ``;`` when the next line opens with ``(``: OPA ends the expression at
    the newline, rego-cpp 1.x reads ``x\n(y)`` as a call of ``x`` ("Function not found")."""
    masked = _mask(text)
    out: list[str] = []
    last = 0
    for match in _PAREN_LINE.finditer(masked):
        if _depth(masked, match.start()) != 0:
            continue  # inside () or []: the newline does not end anything
        out.append(text[last : match.end(1)] + ";")
        last = match.end(1)
    out.append(text[last:])
    return "".join(out)


def _depth(masked: str, at: int) -> int:
    """Open ``(`` and ``[`` at ``at`` since the enclosing ``{`` (a rule body)."""
    closed = 0  # groups closed after the point we scan back from (not enclosing it)
    for ch in reversed(masked[:at]):
        if ch in ")]}":
            closed += 1
        elif ch in "([{":
            if closed:
                closed -= 1
            elif ch == "{":
                return 0  # the enclosing body (or set/object literal): a newline separates here
            else:
                return 1
    return 0


_HOISTED = "__portcullis_w"


def _wildcard_arguments(masked: str) -> list[tuple[int, int, int]]:
    """``(call start, ref start, ref end)`` of each ``ref[_]`` written inside a call's arguments
    (``startswith(x, input.parameters.repos[_])``), which rego-cpp 1.x refuses ("Invalid
    bracket argument") and OPA iterates."""
    found: list[tuple[int, int, int]] = []
    for call in _CALL.finditer(masked):
        if call.group(1) in _NOT_CALLS:
            continue
        close = _closing(masked, call.end() - 1)
        if close is None:
            continue
        at = call.end()
        while (hit := masked.find("[_]", at, close)) != -1:
            start = hit
            while start > 0:
                prev = masked[start - 1]
                if prev == "]":
                    opened = masked.rfind("[", 0, start - 1)
                    if opened == -1:
                        break
                    start = opened
                elif prev.isalnum() or prev in "_.":
                    start -= 1
                else:
                    break
            if start < hit and masked[start] not in "._" and not masked[start].isdigit():
                found.append((call.start(), start, hit + 3))
            at = hit + 3
    return found


def _closing(masked: str, open_at: int) -> int | None:
    """The offset of the bracket closing the one at ``open_at`` (any kind), or None."""
    depth = 0
    for i in range(open_at, len(masked)):
        ch = masked[i]
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
            if depth == 0:
                return i
    return None


def _statement_start(masked: str, at: int) -> int | None:
    """Where the statement holding offset ``at`` begins (after a newline, ``;``, ``{`` or the
    ``|`` of a comprehension); None when it is not inside a rule body."""
    depth = 0
    i = at - 1
    while i >= 0:
        ch = masked[i]
        if ch in ")]}":
            depth += 1
        elif ch in "([":
            depth = max(0, depth - 1)
        elif ch == "{":
            if depth == 0:
                return i + 1
            depth -= 1
        elif depth == 0 and ch in "\n;|":
            return i + 1
        i -= 1
    return None


def _hoist_wildcard_arguments(text: str) -> str:
    """Rewrite ``f(a, x[_])`` as ``__portcullis_wN := x[_]; f(a, __portcullis_wN)`` on the same
    line (same iteration, same line numbers), except under ``not`` where it would change the
    meaning (those stay, and the compiler's error is explained by ``explain_bracket_arguments``)."""
    for n in range(200):
        masked = _mask(text)
        for call_start, ref_start, ref_end in reversed(_wildcard_arguments(masked)):
            start = _statement_start(masked, call_start)
            if start is None:
                continue
            while start < call_start and masked[start] in " \t":
                start += 1
            if masked.startswith("not ", start) or masked.startswith("default ", start):
                continue
            name = f"{_HOISTED}{n}"
            ref = text[ref_start:ref_end]
            text = text[:start] + f"{name} := {ref}; " + text[start:ref_start] + name + text[ref_end:]
            break
        else:
            return text
    return text


def explain_bracket_arguments(modules: Sequence[RegoModule]) -> str:
    """Where a module passes ``x[_]`` to a function in a way the rewrite could not hoist."""
    lines: list[str] = []
    for module in modules:
        for _, ref_start, _end in _wildcard_arguments(_mask(module.source)):
            line, col = _line_col(module.source, ref_start)
            lines.append(
                f"\n{module.name}:{line}:{col}: `[_]` inside a function's arguments is not supported by the "
                f"embedded engine here (under `not`); bind it first: `x := ref[_]` then call with `x`"
            )
    return "".join(lines)


def _matching(masked: str, open_at: int) -> int | None:
    """The offset of the ``]`` closing the ``[`` at ``open_at``; None when another bracket closes it."""
    close = _closing(masked, open_at)
    return close if close is not None and masked[close] == "]" else None


def _mask(text: str) -> str:
    """The text with string contents and comments blanked (same length), for scanning."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "#":
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
        elif ch == '"':
            i += 1
            while i < n and text[i] != '"' and text[i] != "\n":
                if text[i] == "\\":
                    out[i] = " "
                    i += 1
                if i < n:
                    out[i] = " "
                    i += 1
            i += 1
        elif ch == "`":
            i += 1
            while i < n and text[i] != "`":
                if text[i] != "\n":
                    out[i] = " "
                i += 1
            i += 1
        else:
            i += 1
    return "".join(out)


# --- # METADATA ------------------------------------------------------------------------------


def _metadata(name: str, text: str) -> Metadata | None:
    """The package-scoped ``# METADATA`` block, else the first one in the file."""
    lines = text.splitlines()
    found: list[tuple[bool, Metadata]] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "# METADATA":
            i += 1
            continue
        start = i + 1
        i = start
        while i < len(lines) and lines[i].lstrip().startswith("#"):
            i += 1
        body = "\n".join(_uncomment(line) for line in lines[start:i])
        try:
            data = yaml.safe_load(body) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = start + 1 + (mark.line if mark else 0)
            raise PolicySyntaxError(f"{name}:{line}: invalid YAML in # METADATA block: {exc}") from exc
        if not isinstance(data, dict):
            raise PolicySyntaxError(f"{name}:{start}: # METADATA must be a YAML mapping")
        custom = data.get("custom") or {}
        if not isinstance(custom, dict):
            raise PolicySyntaxError(f"{name}:{start}: # METADATA `custom` must be a mapping")
        following = lines[i].strip() if i < len(lines) else ""
        package_scoped = following.startswith("package ") or data.get("scope") in ("package", "subpackages")
        found.append(
            (
                package_scoped,
                Metadata(str(data.get("title") or ""), str(data.get("description") or ""), custom),
            )
        )
    for package_scoped, meta in found:
        if package_scoped:
            return meta
    return found[0][1] if found else None


def _uncomment(line: str) -> str:
    stripped = line.lstrip()[1:]
    return stripped[1:] if stripped.startswith(" ") else stripped


# --- static lint: what rego-cpp would only notice at evaluation time ------------------------

_CALL = re.compile(r"(?<![\w.\]])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\(")
# Built-ins the embedded engine has that policies must not call, and why.
REFUSED_BUILTINS = {
    "opa.runtime": "in the embedded engine it returns every environment variable of the process "
    "evaluating the policy (the webhook's credentials, a CI job's secrets), which a message could echo",
}
_NOT_CALLS = frozenset({"if", "not", "in", "contains", "else", "some", "every", "with", "as", "set"})
_WITH_INPUT = re.compile(r"\bwith\s+input\s+as\b")
_INVENTORY = re.compile(r"\bdata\.inventory\b|\bdata\[\s*\"inventory\"")


def lint(modules: Sequence[RegoModule], is_builtin: Callable[[str], bool]) -> list[str]:
    """Problems the compiler accepts but evaluation would trip over: calls to functions that are
    neither built in nor defined in any module. Returns ``file:line:col: message`` strings."""
    defined: set[str] = set()
    for module in modules:
        defined.update(module.rules)
    problems: list[str] = []
    for module in modules:
        masked = _mask(module.source)
        for match in _CALL.finditer(masked):
            fn = match.group(1)
            leaf = fn.rsplit(".", 1)[-1]
            refused = REFUSED_BUILTINS.get(fn)
            if refused is not None:
                line, col = _line_col(module.source, match.start())
                problems.append(f"{module.name}:{line}:{col}: `{fn}` is not available to policies: {refused}")
                continue
            if fn in _NOT_CALLS or leaf in defined or is_builtin(fn):
                continue
            line, col = _line_col(module.source, match.start())
            problems.append(
                f"{module.name}:{line}:{col}: undefined function `{fn}` (not a built-in of the embedded "
                f"engine and not defined in any policy module)"
            )
        for match in _WITH_INPUT.finditer(masked):
            line, col = _line_col(module.source, match.start())
            problems.append(
                f"{module.name}:{line}:{col}: `with input as <document>` crashes the embedded engine "
                f"(rego-cpp 1.x) when the rule under test calls a built-in; replace input per key "
                f"instead: `with input.pods as ... with input.request as ...`"
            )
    return problems


def inventory_to_input(source: str, key: str) -> str:
    """``data.inventory`` read from ``input.<key>`` instead (same line numbers). Gatekeeper's
    replicated cluster state changes at run time; a compiled bundle's data cannot, so the
    caller passes the current inventory with each evaluation (``gatekeeper.evaluate_template``)."""
    masked = _mask(source)
    pieces: list[str] = []
    last = 0
    for match in _INVENTORY.finditer(masked):
        pieces.append(source[last : match.start()])
        text = match.group(0)
        pieces.append(f"input.{key}" if text.startswith("data.") else f'input["{key}"')
        last = match.end()
    pieces.append(source[last:])
    return "".join(pieces)


def uses_inventory(module: RegoModule) -> int | None:
    """The 1-based line where a module reads ``data.inventory``, if it does."""
    match = _INVENTORY.search(_mask(module.source))
    return _line_col(module.source, match.start())[0] if match else None


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


# --- compiler errors → file:line:col ----------------------------------------------------------

_ERROR_AT = re.compile(r"\(error (?:(\d+):)?")
_ERRORMSG = re.compile(r"\(errormsg (\d+):")


def explain_compile_error(raw: str, modules: Sequence[RegoModule]) -> str:
    """Turn rego-cpp's error tree (``(error 6:a.rego|47|1 (errormsg 27:...))``) into
    ``a.rego:4:16: Invalid arithmetic operator`` lines (byte offsets become line/column)."""
    by_name = {m.name: m.source for m in modules}
    out: list[str] = []
    for start in [m.start() for m in _ERROR_AT.finditer(raw)]:
        location = _location(raw, start, by_name)
        msg_match = _ERRORMSG.search(raw, start)
        if msg_match is None:
            continue
        size = int(msg_match.group(1))
        message = raw[msg_match.end() : msg_match.end() + size].strip()
        out.append(f"{location}: {message}" if location else message)
    return "\n".join(dict.fromkeys(out)) or raw.strip()


def _location(raw: str, start: int, sources: Mapping[str, str]) -> str:
    header = _ERROR_AT.match(raw, start)
    if header is None or header.group(1) is None:
        return ""
    size = int(header.group(1))
    name = raw[header.end() : header.end() + size]
    tail = re.match(r"\|(\d+)\|(\d+)", raw[header.end() + size :])
    source = sources.get(name)
    if tail is None or source is None:
        return name
    data = source.encode("utf-8")[: int(tail.group(1))]
    line, col = _line_col(data.decode("utf-8", "replace"), len(data.decode("utf-8", "replace")))
    return f"{name}:{line}:{col}"
