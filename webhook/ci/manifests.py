"""Manifests in, objects with their file and line out (decode stage of ``portcullis check``).

YAML is composed with libyaml (when present) and turned into plain objects here, so we keep the
line of every field (a finding points at the offending line), reject duplicate keys, and bound
alias expansion (a "billion laughs" document fails fast instead of eating memory).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SUFFIXES = (".yaml", ".yml", ".json")
MAX_NODES_PER_DOCUMENT = 200_000  # expanded nodes; real manifests have a few hundred
MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Manifest:
    """One Kubernetes object from a file, with the line of the object and of each field path."""

    file: str
    line: int  # 1-based line where the object starts
    obj: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict, repr=False)  # "spec.containers[0].image" -> line

    def line_of(self, path: str | None, prefix: str = "") -> int:
        """The line of ``path`` (or of its nearest ancestor that has one)."""
        if not path:
            return self.line
        candidate = f"{prefix}{path}" if prefix else path
        while candidate:
            if candidate in self.lines:
                return self.lines[candidate]
            cut = max(candidate.rfind("."), candidate.rfind("["))
            candidate = candidate[:cut] if cut > 0 else ""
        return self.line


@dataclass(frozen=True, slots=True)
class InputProblem:
    """A file or document that could not be read; the rest is still checked."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass(slots=True)
class Loaded:
    manifests: list[Manifest] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)
    files: int = 0


def expand_paths(paths: Sequence[str]) -> Iterator[str]:
    """Files as given, directories walked recursively for *.yaml|*.yml|*.json, '-' for stdin."""
    for raw in paths:
        if raw == "-":
            yield raw
            continue
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if name.endswith(_SUFFIXES):
                        yield os.path.join(root, name)
        else:
            yield raw


def load(paths: Sequence[str], stdin: Any = None) -> Loaded:
    """Read every manifest under ``paths``; unreadable input becomes a problem, never an exception.

    A path that holds no object at all (an empty directory, a directory without YAML or JSON
    files, an empty file) is a problem too: it is most likely the wrong path.
    """
    out = Loaded()
    for raw in paths:
        before = (len(out.manifests), len(out.problems))
        for name in expand_paths([raw]):
            out.files += 1
            _load_file(name, out, stdin)
        if (len(out.manifests), len(out.problems)) == before:
            out.problems.append(InputProblem("<stdin>" if raw == "-" else raw, 0, NOTHING_FOUND))
    return out


NOTHING_FOUND = "no Kubernetes objects found"


def _load_file(name: str, out: Loaded, stdin: Any) -> None:
    if name == "-":
        _load_text((stdin or sys.stdin).read(), "<stdin>", out)
        return
    try:
        with open(name, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        out.problems.append(InputProblem(name, 0, f"cannot read: {exc.strerror or exc}"))
        return
    if len(data) > MAX_FILE_BYTES:
        out.problems.append(InputProblem(name, 0, f"file is larger than {MAX_FILE_BYTES} bytes"))
        return
    if b"\0" in data[:8192]:
        out.problems.append(InputProblem(name, 0, "binary file, not YAML or JSON"))
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.problems.append(InputProblem(name, 0, f"not UTF-8 text (byte {exc.start})"))
        return
    _load_text(text, name, out)


def _load_text(text: str, name: str, out: Loaded) -> None:
    loader = _Loader(text)
    try:
        while True:
            try:
                node = loader.get_node() if loader.check_node() else None
            except yaml.YAMLError as exc:
                out.problems.append(_yaml_problem(name, exc))
                return  # the parser cannot resynchronise after a syntax error
            except RecursionError:
                out.problems.append(InputProblem(name, 0, "document nested too deeply; refused"))
                return
            if node is None:
                return
            line = node.start_mark.line + 1
            try:
                builder = _Builder(name)
                obj = builder.build(node, "")
            except _DocumentError as exc:
                out.problems.append(InputProblem(name, exc.line, exc.message))
                continue
            except RecursionError:
                out.problems.append(InputProblem(name, line, "document nested too deeply; refused"))
                continue
            if obj is None:
                continue  # an empty document ('---' with nothing after it)
            if not isinstance(obj, dict):
                out.problems.append(InputProblem(name, line, f"document is a {type(obj).__name__}, not an object"))
                continue
            _add_object(obj, name, line, builder.lines, "", out)
    finally:
        loader.dispose()


def _add_object(obj: dict[str, Any], name: str, line: int, lines: dict[str, int], prefix: str, out: Loaded) -> None:
    kind = obj.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(obj.get("items"), list):
        for index, item in enumerate(obj["items"]):
            item_prefix = f"{prefix}items[{index}]"
            item_line = lines.get(item_prefix, line)
            if not isinstance(item, dict):
                out.problems.append(InputProblem(name, item_line, f"{kind} item {index} is not an object"))
                continue
            _add_object(item, name, item_line, lines, item_prefix + ".", out)
        return
    if not isinstance(kind, str) or not kind:
        out.problems.append(InputProblem(name, line, "object has no `kind`"))
        return
    if prefix:
        cut = len(prefix)
        lines = {k[cut:]: v for k, v in lines.items() if k.startswith(prefix)}
    out.manifests.append(Manifest(name, line, obj, lines))


def _yaml_problem(name: str, exc: yaml.YAMLError) -> InputProblem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    return InputProblem(name, mark.line + 1 if mark else 0, text)


_STR_TAG = "tag:yaml.org,2002:str"
# Plain scalars PyYAML keeps as strings but kubectl's YAML reader (go-yaml v2, YAML 1.1) does
# not: `privileged: y` reaches the cluster as `true`, `runAsUser: 0o0`, `0X0` or `0e0` as 0.
# Read them the way the cluster will, or CI would pass what admission then judges differently.
_GO_BOOLS = {"y": True, "Y": True, "n": False, "N": False}
# go-yaml v2's ``resolve``: underscores dropped, then ``strconv.ParseInt(s, 0, 64)`` (any case of
# the 0x/0o/0b prefixes; PyYAML knows only lower-case 0x and 0b), then its float pattern, which
# (unlike YAML 1.1's) needs neither a dot nor a sign in the exponent, nor digits before the dot.
_GO_PREFIXED_INT = re.compile(r"[-+]?0[xXoObB][0-9a-fA-F]+")
_GO_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def _go_yaml_scalar(text: str) -> bool | int | float | None:
    """What go-yaml v2 makes of a plain scalar PyYAML left a string, or None if a string too."""
    if text in _GO_BOOLS:
        return _GO_BOOLS[text]
    # a scalar starting with "." goes straight to ParseFloat there, underscores and all
    plain = text if text.startswith(".") else text.replace("_", "")
    if _GO_PREFIXED_INT.fullmatch(plain):
        try:
            number = int(plain, 0)
        except ValueError:  # a digit outside the base (0o9): a string there too
            return None
        return number if _INT64_MIN <= number <= _UINT64_MAX else None
    if _GO_FLOAT.fullmatch(plain):
        value = float(plain)
        return value if math.isfinite(value) else None  # out of range: ParseFloat fails, a string
    return None


class _DocumentError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


class _Builder:
    """Nodes → Python objects, recording the line of every path; duplicate keys are errors."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: dict[str, int] = {}
        self.budget = MAX_NODES_PER_DOCUMENT
        self._scalar = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: str) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _DocumentError(
                node.start_mark.line + 1,
                f"document expands to more than {MAX_NODES_PER_DOCUMENT} nodes (alias bomb?); refused",
            )
        if path:
            self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in self._pairs(node):
                key = self._key(key_node)
                if key in result:
                    raise _DocumentError(
                        key_node.start_mark.line + 1,
                        f"duplicate key {key!r} (YAML forbids it; one value would be lost)",
                    )
                result[key] = self.build(value_node, f"{path}.{key}" if path else str(key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        if not node.style and node.tag == _STR_TAG:  # plain (libyaml says "", PyYAML None)
            value = _go_yaml_scalar(node.value)
            if value is not None:
                return value
        try:
            return self._scalar.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. a timestamp 2001-13-01
            raise _DocumentError(node.start_mark.line + 1, f"invalid value: {exc}") from exc

    def _pairs(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges the anchored mapping
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if isinstance(source, yaml.MappingNode):
                        pairs.extend(self._pairs(source))
                continue
            pairs.append((key_node, value_node))
        return pairs

    def _key(self, node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise _DocumentError(node.start_mark.line + 1, "mapping keys must be scalars")
        try:
            value = self._scalar.construct_object(node)
        except (yaml.YAMLError, ValueError) as exc:
            raise _DocumentError(node.start_mark.line + 1, f"invalid key: {exc}") from exc
        return value if isinstance(value, str) else str(value)
