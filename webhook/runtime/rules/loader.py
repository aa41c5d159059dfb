"""Falco rules YAML → collected lists, macros and rules (the first stage of the rules engine).

Files are read in order; later items append to or override earlier ones exactly as Falco's
``rule_loader`` does (``override:``, the deprecated ``append: true``, enabling by name).
Every problem becomes a ``Diagnostic`` with file, line and the offending text; errors are
collected across all files and raised together by ``rules.load`` (see ``__init__``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from webhook.runtime.rules.model import Collection, Diagnostic, ExceptionDef, ListDef, Loc, MacroDef, RuleDef, Text

__all__ = [
    "BUILTIN_PLUGINS", "ENGINE_VERSION", "PRIORITIES", "Collection", "Diagnostic", "Loc", "collect", "expand",
    "rules_files",
]  # fmt: skip

ENGINE_VERSION = (0, 57, 0)
# Plugins whose fields this engine provides natively, with the version it is compatible with.
BUILTIN_PLUGINS = {"container": (0, 4, 0)}
PRIORITIES = {
    "emergency": "Emergency",
    "alert": "Alert",
    "critical": "Critical",
    "error": "Error",
    "warning": "Warning",
    "notice": "Notice",
    "informational": "Informational",
    "info": "Informational",
    "debug": "Debug",
}
_RULE_KEYS = frozenset(
    (
        "rule",
        "condition",
        "desc",
        "output",
        "priority",
        "enabled",
        "tags",
        "source",
        "exceptions",
        "override",
        "append",
        "warn_evttypes",
        "skip-if-unknown-filter",
        "capture",
        "capture_duration",
    )
)
_APPENDABLE = {"rule": {"condition", "output", "desc", "tags", "exceptions"}, "macro": {"condition"}, "list": {"items"}}
_REPLACEABLE = {
    "rule": {
        "condition",
        "output",
        "desc",
        "priority",
        "tags",
        "exceptions",
        "enabled",
        "warn_evttypes",
        "skip-if-unknown-filter",
        "capture",
        "capture_duration",
    },
    "macro": {"condition"},
    "list": {"items"},
}
_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class _ItemError(Exception):
    """One item is invalid; carries the diagnostic (the item is skipped, loading goes on)."""

    def __init__(self, diag: Diagnostic) -> None:
        super().__init__(diag.message)
        self.diag = diag


class _Constructor(yaml.constructor.SafeConstructor):  # type: ignore[misc]
    """PyYAML resolves a bare ``=`` to the ``value`` tag; Falco (yaml-cpp) reads it as a string."""


_Constructor.add_constructor("tag:yaml.org,2002:value", _Constructor.construct_yaml_str)
_constructor = _Constructor()


class _BadValue(Exception):
    """PyYAML could not build a value (e.g. the timestamp ``2001-13-01``, or nesting too deep)."""

    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node, self.message = node, message


def _py(node: yaml.Node) -> Any:
    try:
        return _constructor.construct_object(node, deep=True)
    except ValueError as exc:  # SafeConstructor's timestamp (and int/float edge cases)
        bad = _bad_scalar(node) or node
        raise _BadValue(bad, f"invalid YAML value: {exc} (quote it to keep it a string)") from exc
    except RecursionError as exc:
        raise _BadValue(node, "YAML nested too deeply (flatten the structure)") from exc
    finally:
        _constructor.constructed_objects.clear()  # a failed build leaves partial state behind
        _constructor.recursive_objects.clear()


def _bad_scalar(root: yaml.Node) -> yaml.Node | None:
    """The first scalar under ``root`` that PyYAML cannot construct (to name its line)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            try:
                yaml.constructor.SafeConstructor().construct_object(node)
            except ValueError:
                return node
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
    return None


def _version(text: Any) -> tuple[int, ...] | None:
    m = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?\s*", str(text))
    return None if m is None else tuple(int(x or 0) for x in m.groups())


def _plugin_requirement(req: Any) -> bool:
    """A ``{name, version}`` mapping whose values are scalars (a version may be written as a number)."""
    return (
        isinstance(req, dict)
        and isinstance(req.get("name"), str)
        and isinstance(req.get("version"), str | int | float)
        and not isinstance(req.get("version"), bool)
    )


class _FileReader:
    """Reads one file's items into the collection."""

    def __init__(self, col: Collection, name: str, text: str) -> None:
        self.col, self.name, self.lines = col, name, text.splitlines()

    def loc(self, node: yaml.Node) -> Loc:
        return Loc(self.name, node.start_mark.line + 1)

    def snippet(self, node: yaml.Node, limit: int = 6) -> str:
        first, last = node.start_mark.line, max(node.end_mark.line, node.start_mark.line + 1)
        return "\n".join(self.lines[first : min(last, first + limit)])

    def fail(self, node: yaml.Node, message: str) -> _ItemError:
        return _ItemError(Diagnostic(self.loc(node), message, self.snippet(node)))

    def warn(self, node: yaml.Node, message: str) -> None:
        self.col.warnings.append(Diagnostic(self.loc(node), message, self.snippet(node, 1)))

    def read(self, root: yaml.Node | None) -> None:
        if root is None:
            return
        if not isinstance(root, yaml.SequenceNode):
            self.col.errors.append(Diagnostic(self.loc(root), "rules file must be a YAML list of items"))
            return
        for item in root.value:
            try:
                self.item(item)
            except _ItemError as exc:
                self.col.errors.append(exc.diag)
            except _BadValue as exc:
                self.col.errors.append(Diagnostic(self.loc(exc.node), exc.message, self.snippet(exc.node, 1)))

    def mapping(self, item: yaml.Node) -> dict[str, yaml.Node]:
        if not isinstance(item, yaml.MappingNode):
            raise self.fail(item, "item must be a mapping (rule, macro, list, ...)")
        out: dict[str, yaml.Node] = {}
        for k, v in item.value:
            key = str(_py(k))  # str: a sequence or mapping key is unhashable
            if key in out:
                raise self.fail(k, f"key '{key}' appears twice in this item")
            out[key] = v
        return out

    def item(self, item: yaml.Node) -> None:
        keys = self.mapping(item)
        for kind in ("rule", "macro", "list", "required_engine_version", "required_plugin_versions"):
            if kind in keys:
                getattr(self, "item_" + kind)(item, keys)
                return
        self.warn(item, f"unknown rules file item with keys {sorted(keys)} (ignored)")

    # -- typed accessors ------------------------------------------------------------------
    def get(self, keys: dict[str, yaml.Node], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in keys:
            return default
        value = _py(keys[key])
        if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(keys[key], f"key '{key}' must be a {names}, got {type(value).__name__}")
        return value

    def text(self, keys: dict[str, yaml.Node], key: str) -> Text:
        node = keys[key]
        value = self.get(keys, key, str)
        return Text(value, [(0, self.loc(node))])

    def overrides(self, item: yaml.Node, keys: dict[str, yaml.Node], kind: str) -> dict[str, str] | None:
        """The ``override:`` directive, checked against what may be appended or replaced."""
        if "override" not in keys:
            return None
        if "append" in keys:
            raise self.fail(item, "'override' and 'append' cannot be used together")
        ov = self.get(keys, "override", dict)
        for key, how in ov.items():
            if not isinstance(key, str) or not isinstance(how, str):
                raise self.fail(
                    keys["override"], f"override entries must be 'key: append' or 'key: replace', got {key!r}: {how!r}"
                )
            allowed = {"append": _APPENDABLE, "replace": _REPLACEABLE}.get(how)
            if allowed is None:
                raise self.fail(keys["override"], f"override of '{key}' must be 'append' or 'replace'")
            if key not in allowed[kind]:
                raise self.fail(keys["override"], f"key '{key}' cannot be overridden with '{how}' in a {kind}")
            if key not in keys:
                raise self.fail(keys["override"], f"key '{key}' is in 'override' but not defined in this {kind}")
        for key in keys:
            if key not in ov and key not in (kind, "override"):
                raise self.fail(keys[key], f"key '{key}' must be listed in 'override' (append or replace)")
        return {str(k): str(v) for k, v in ov.items()}

    def check_name(self, item: yaml.Node, kind: str, name: str) -> None:
        if not _NAME_RE.match(name):
            self.warn(item, f"{kind} name '{name}' is invalid: {kind} names should match {_NAME_RE.pattern}")

    # -- items ----------------------------------------------------------------------------
    def item_required_engine_version(self, item: yaml.Node, keys: dict[str, yaml.Node]) -> None:
        node = keys["required_engine_version"]
        raw = str(_py(node)).strip()
        want = _version(raw)
        if want is None:
            raise self.fail(node, "required_engine_version must be a version like 0.57.0")
        if raw.isdigit():  # the old integer form N means engine 0.N.0
            want = (0, int(raw), 0)
        if want > ENGINE_VERSION:
            engine = ".".join(map(str, ENGINE_VERSION))
            raise self.fail(node, f"rules require engine version {_py(node)}, this engine is {engine}")

    def item_required_plugin_versions(self, item: yaml.Node, keys: dict[str, yaml.Node]) -> None:
        node = keys["required_plugin_versions"]
        reqs = self.get(keys, "required_plugin_versions", list)
        for req in reqs:
            if not _plugin_requirement(req):
                raise self.fail(node, "each required plugin needs a string 'name' and 'version'")
            alternatives = req.get("alternatives") or []
            if not isinstance(alternatives, list) or not all(_plugin_requirement(a) for a in alternatives):
                raise self.fail(node, f"plugin '{req['name']}': 'alternatives' must be a list of {{name, version}}")
            ok = any(
                c["name"] in BUILTIN_PLUGINS and (_version(c["version"]) or (0,)) <= BUILTIN_PLUGINS[c["name"]]
                for c in [req, *alternatives]
            )
            if not ok:
                have = ", ".join(f"{k} {'.'.join(map(str, v))}" for k, v in BUILTIN_PLUGINS.items())
                raise self.fail(
                    keys["required_plugin_versions"],
                    f"plugin '{req['name']}' version {req['version']} is required; this engine provides {have}",
                )

    def item_list(self, item: yaml.Node, keys: dict[str, yaml.Node]) -> None:
        name = self.get(keys, "list", str)
        ov = self.overrides(item, keys, "list")
        append = self.get(keys, "append", bool, False)
        if append:
            self.warn(item, "the 'append' key is deprecated: use 'override: {items: append}'")
        if "items" not in keys:
            raise self.fail(item, f"list '{name}' has no 'items'")
        raw = self.get(keys, "items", list) or []
        items = [str(x) if not isinstance(x, bool) else str(x).lower() for x in raw]
        prev = self.col.lists.get(name)
        if append or (ov and ov.get("items") == "append"):
            if prev is None:
                raise self.fail(item, f"list '{name}' is appended to but was never defined")
            prev.items.extend(items)
        elif ov:
            if prev is None:
                raise self.fail(item, f"list '{name}' is overridden but was never defined")
            prev.items = items
        else:
            self.check_name(item, "list", name)
            self.col.lists[name] = ListDef(name, items, self.loc(item))

    def item_macro(self, item: yaml.Node, keys: dict[str, yaml.Node]) -> None:
        name = self.get(keys, "macro", str)
        ov = self.overrides(item, keys, "macro")
        append = self.get(keys, "append", bool, False)
        if append:
            self.warn(item, "the 'append' key is deprecated: use 'override: {condition: append}'")
        if "condition" not in keys:
            raise self.fail(item, f"macro '{name}' has no 'condition'")
        cond = self.text(keys, "condition")
        prev = self.col.macros.get(name)
        if append or (ov and ov.get("condition") == "append"):
            if prev is None:
                raise self.fail(item, f"macro '{name}' is appended to but was never defined")
            prev.condition.append(cond)
        elif ov:
            if prev is None:
                raise self.fail(item, f"macro '{name}' is overridden but was never defined")
            prev.condition = cond
        else:
            self.check_name(item, "macro", name)
            self.col.macros[name] = MacroDef(name, cond, self.loc(item))

    def exceptions(self, keys: dict[str, yaml.Node]) -> list[ExceptionDef]:
        if "exceptions" not in keys:
            return []
        node = keys["exceptions"]
        out: list[ExceptionDef] = []
        for sub in node.value if isinstance(node, yaml.SequenceNode) else []:
            ex = _py(sub)
            if not isinstance(ex, dict) or not isinstance(ex.get("name"), str):
                raise self.fail(sub, "each exception needs a 'name'")
            if any(e.name == ex["name"] for e in out):
                raise self.fail(sub, f"exception name '{ex['name']}' is used twice in this rule")
            extra = set(ex) - {"name", "fields", "comps", "values"}
            if extra:
                raise self.fail(sub, f"unknown exception keys {sorted(extra)}")
            values = ex.get("values") or []
            if not isinstance(values, list):
                raise self.fail(sub, f"exception '{ex['name']}': 'values' must be a list")
            out.append(ExceptionDef(ex["name"], ex.get("fields"), ex.get("comps"), values, self.loc(sub)))
        if not isinstance(node, yaml.SequenceNode) and _py(node) is not None:
            raise self.fail(node, "'exceptions' must be a list")
        return out

    def item_rule(self, item: yaml.Node, keys: dict[str, yaml.Node]) -> None:
        name = self.get(keys, "rule", str)
        for key in keys:
            if key not in _RULE_KEYS:
                self.warn(keys[key], f"rule '{name}': unknown key '{key}' (ignored)")
        ov = self.overrides(item, keys, "rule")
        append = self.get(keys, "append", bool, False)
        prev = self.col.rules.get(name)
        if append:
            self.warn(item, "the 'append' key is deprecated: use 'override' (e.g. {condition: append})")
            if prev is None:
                raise self.fail(item, f"rule '{name}' is appended to but was never defined")
            if "condition" in keys:
                prev.condition.append(self.text(keys, "condition"))
            self.merge_exceptions(prev, self.exceptions(keys), item)
            return
        if ov is not None:
            if prev is None:
                raise self.fail(item, f"rule '{name}' is overridden but was never defined")
            self.apply_override(prev, keys, ov, item)
            return
        if set(keys) <= {"rule", "enabled"} and "enabled" in keys:
            if prev is None:
                raise self.fail(item, f"rule '{name}' is enabled/disabled but was never defined")
            prev.enabled = self.get(keys, "enabled", bool)
            return
        missing = [k for k in ("condition", "output", "desc", "priority") if k not in keys]
        if missing:
            raise self.fail(item, f"rule '{name}' is missing required key(s): {', '.join(missing)}")
        rule = RuleDef(
            name=name,
            condition=self.text(keys, "condition"),
            output=self.get(keys, "output", str).strip(),
            desc=self.get(keys, "desc", str).strip(),
            priority=self.priority(keys),
            loc=self.loc(item),
            enabled=self.get(keys, "enabled", bool, True),
            tags=self.tags(keys),
            source=self.get(keys, "source", str, "syscall"),
            exceptions=self.exceptions(keys),
            warn_evttypes=self.get(keys, "warn_evttypes", bool, True),
            skip_if_unknown_filter=self.get(keys, "skip-if-unknown-filter", bool, False),
        )
        self.col.rules[name] = rule  # a redefinition replaces the rule in place

    def priority(self, keys: dict[str, yaml.Node]) -> str:
        value = self.get(keys, "priority", str)
        canon = PRIORITIES.get(value.strip().lower())
        if canon is None:
            raise self.fail(keys["priority"], f"invalid priority '{value}': one of {', '.join(PRIORITIES)}")
        return canon

    def tags(self, keys: dict[str, yaml.Node]) -> list[str]:
        tags = self.get(keys, "tags", list, [])
        return [str(t) for t in tags]

    def apply_override(self, prev: RuleDef, keys: dict[str, yaml.Node], ov: dict[str, str], item: yaml.Node) -> None:
        for key, how in ov.items():
            if key == "condition":
                cond = self.text(keys, "condition")
                if how == "append":
                    prev.condition.append(cond)
                else:
                    prev.condition = cond
            elif key in ("output", "desc"):
                value = self.get(keys, key, str).strip()
                old = getattr(prev, key)
                setattr(prev, key, f"{old} {value}" if how == "append" else value)
            elif key == "tags":
                new = self.tags(keys)
                prev.tags = [*prev.tags, *(t for t in new if t not in prev.tags)] if how == "append" else new
            elif key == "exceptions":
                if how == "append":
                    self.merge_exceptions(prev, self.exceptions(keys), item)
                else:
                    prev.exceptions = self.exceptions(keys)
            elif key == "priority":
                prev.priority = self.priority(keys)
            elif key == "enabled":
                prev.enabled = self.get(keys, "enabled", bool)
            elif key == "warn_evttypes":
                prev.warn_evttypes = self.get(keys, key, bool)
            elif key == "skip-if-unknown-filter":
                prev.skip_if_unknown_filter = self.get(keys, key, bool)

    def merge_exceptions(self, prev: RuleDef, new: list[ExceptionDef], item: yaml.Node) -> None:
        """Values of an exception with a known name are appended; new names are added."""
        for ex in new:
            old = next((e for e in prev.exceptions if e.name == ex.name), None)
            if old is None:
                prev.exceptions.append(ex)
            elif ex.fields is not None or ex.comps is not None:
                raise self.fail(item, f"exception '{ex.name}' exists: only its 'values' can be appended")
            else:
                if not ex.values:
                    self.warn(item, f"exception '{ex.name}' is appended with no values")
                old.values = [*old.values, *ex.values]


def _read_file(col: Collection, path: Path) -> None:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        col.errors.append(Diagnostic(Loc(name, 0), f"cannot read rules file: {getattr(exc, 'strerror', None) or exc}"))
        return
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # a character YAML does not allow
        col.errors.append(Diagnostic(Loc(name, 0), f"invalid YAML: {exc}".splitlines()[0]))
        return
    try:
        root = loader.get_single_node()
    except RecursionError:  # PyYAML composes recursively: name the line where it gave up
        line = loader.get_mark().line + 1
        col.errors.append(Diagnostic(Loc(name, line), "YAML nested too deeply (flatten the structure)"))
        return
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        snippet = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
        col.errors.append(Diagnostic(Loc(name, line), f"invalid YAML: {exc}".splitlines()[0], snippet))
        return
    finally:
        loader.dispose()
    _FileReader(col, name, text).read(root)


RULES_SUFFIXES = (".yaml", ".yml")


def rules_files(path: Path) -> list[Path] | str:
    """The rules files ``path`` names, in load order, or why it names none.

    A file is itself. A directory gives its ``*.yaml``/``*.yml`` entries in sorted name order, not
    recursively (Falco's ``rules_files`` reads a directory the same way), skipping names that start
    with a dot: a mounted ConfigMap holds ``..data`` and ``..2024_01_01_...`` next to the visible
    names, which are symlinks through ``..data`` to the current copy, so each file is read once,
    through the link the kubelet swaps atomically on update.
    """
    if not path.is_dir():
        return [path]
    try:
        names = sorted(entry.name for entry in path.iterdir())
    except OSError as exc:
        return f"cannot list rules directory: {exc.strerror}"
    out = []
    for name in names:
        entry = path / name
        if name.startswith(".") or not name.endswith(RULES_SUFFIXES) or entry.is_dir():
            continue
        if entry.exists() and not entry.is_file():  # a FIFO or device would block or never end
            return f"{name}: not a regular file"
        out.append(entry)  # a dangling link stays: reading it reports the error by name
    if not out:
        return f"no rules files ({', '.join('*' + s for s in RULES_SUFFIXES)}) in this directory"
    return out


def expand(paths: Iterable[Path | str]) -> tuple[list[Path], list[Diagnostic]]:
    """Files and directories → the rules files in load order, and an error per path naming none."""
    files: list[Path] = []
    problems: list[Diagnostic] = []
    for path in paths:
        found = rules_files(Path(path))
        if isinstance(found, str):
            problems.append(Diagnostic(Loc(str(path), 0), found))
        else:
            files.extend(found)
    return files, problems


def collect(paths: Iterable[Path | str]) -> Collection:
    """Read every file (directories: their rules files, sorted) in order into one collection
    (errors and warnings are collected in it)."""
    col = Collection()
    files, problems = expand(paths)
    col.errors.extend(problems)
    for path in files:
        _read_file(col, path)
    return col
