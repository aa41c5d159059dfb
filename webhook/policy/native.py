"""The regopy / rego-cpp boundary: bundles, the input copy, reusable interpreters, one
entrypoint query, and result values read from the engine. Everything the C library returns is
turned into Python values or ``PolicyEvalError`` here; no other module calls regopy's C API.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import tempfile
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import orjson
import regopy
from regopy import rego_shared

from webhook import errors
from webhook.policy import modules


class PolicyEvalError(errors.PortcullisError):
    """A policy failed while evaluating (error, wrong output shape): handled by its failure mode."""


class CompileFailed(Exception):
    """rego-cpp refused the modules; ``raw`` is its error tree (``modules.explain_compile_error``)."""

    def __init__(self, raw: str, text: str = "") -> None:
        super().__init__(raw or text)
        self.raw = raw
        self.text = text  # the engine's own messages when it gives no error tree (no location)


def build_bundle(sources: Sequence[tuple[str, str]], entrypoints: Sequence[str]) -> Any:
    """Compile ``(name, source)`` modules into a bundle with ``entrypoints``; raise ``CompileFailed``."""
    builder = interpreter()
    try:
        for name, source in sources:
            builder.add_module(name, source)
        bundle = builder.build(None, list(entrypoints))
    except regopy.RegoError as exc:
        raise CompileFailed(str(exc)) from exc
    if not bundle.ok():
        raise CompileFailed("", _error_text(bundle.node()._impl))
    return bundle


def bundle_bytes(bundle: Any) -> bytes | None:
    """The bundle in rego-cpp's binary format (``policy.plan`` reads it), or None if rego-cpp
    cannot write it. Not the JSON format: its writer corrupts the heap once aiohttp is loaded,
    and it copies each module's source to the module's name, which for an absolute name is the
    policy file itself (it rewrote Gatekeeper templates with their extracted Rego)."""
    with tempfile.TemporaryDirectory(prefix="portcullis-bundle-") as tmp:
        path = Path(tmp) / "bundle.rbb"
        try:
            interpreter().save_bundle(str(path), bundle, regopy.BundleFormat.Binary)
            return path.read_bytes()
        except (regopy.RegoError, OSError):
            return None


def set_input(interpreter: Any, document: Any) -> None:
    """Copy ``document`` into ``interpreter`` as its ``input``; raise ``PolicyEvalError`` when
    a value cannot be represented (unencodable string, unsupported type, nesting too deep).

    Same value tree as ``regopy.Input`` (rego-cpp's C input stack) at a fraction of its cost:
    exact-type dispatch and direct C calls instead of ABC checks and a buffer per string.
    The C side clones every subtree once per enclosing object, so this remains the second
    largest cost of an evaluation after the policies themselves.
    """
    handle = _lib.regoNewInput()
    try:
        try:
            _push(handle, document, 0)
        except (UnicodeEncodeError, RecursionError, OverflowError) as exc:
            raise PolicyEvalError(f"the input cannot be passed to the engine: {exc}") from None
        if _lib.regoSetInput(interpreter._impl, handle) != _OK:
            raise PolicyEvalError(f"the engine refused the input: {rego_shared.rego_get_error(interpreter._impl)}")
    finally:
        _lib.regoFreeInput(handle)


_lib = rego_shared.rego
_OK = 0
_MAX_INPUT_DEPTH = 200  # rego-cpp clones recursively in C++; keep its stack bounded
_INT64 = (-(2**63), 2**63 - 1)
_in_str, _in_int, _in_float = _lib.regoInputString, _lib.regoInputInt, _lib.regoInputFloat
_in_bool, _in_null, _in_item = _lib.regoInputBoolean, _lib.regoInputNull, _lib.regoInputObjectItem
_in_object, _in_array, _in_set = _lib.regoInputObject, _lib.regoInputArray, _lib.regoInputSet


def _push(handle: int, value: Any, depth: int) -> None:
    """Push ``value`` onto the engine's input stack (post-order: children, then the container).

    Errors are sticky in the C input, so return codes are checked once, by ``regoSetInput``.
    Strings are passed as C strings: like ``regopy.Input``, a NUL ends them.
    """
    kind = type(value)
    if kind is str:
        # rego-cpp keeps an input string as escaped text and unescapes it when a built-in reads
        # it: a backslash must arrive escaped, or `\\.` in a regex from parameters is an
        # "Invalid escape sequence" and `\\n` turns into a newline.
        _in_str(handle, (value.replace("\\", "\\\\") if "\\" in value else value).encode())
    elif kind is dict:
        if depth > _MAX_INPUT_DEPTH:
            raise PolicyEvalError(f"the input is nested deeper than {_MAX_INPUT_DEPTH} levels")
        for key, item in value.items():
            if type(key) is str and "\\" not in key:
                _in_str(handle, key.encode())
            else:
                _push(handle, key, depth + 1)
            _push(handle, item, depth + 1)
            _in_item(handle)
        _in_object(handle, len(value))
    elif kind is list:
        if depth > _MAX_INPUT_DEPTH:
            raise PolicyEvalError(f"the input is nested deeper than {_MAX_INPUT_DEPTH} levels")
        for item in value:
            _push(handle, item, depth + 1)
        _in_array(handle, len(value))
    elif kind is bool:
        _in_bool(handle, value)
    elif kind is int:
        if _INT64[0] <= value <= _INT64[1]:
            _in_int(handle, value)
        else:  # the C API has no big integers (regopy silently wraps them)
            _in_float(handle, float(value))
    elif value is None:
        _in_null(handle)
    elif kind is float:
        _in_float(handle, value)
    else:
        _push_other(handle, value, depth)


def _push_other(handle: int, value: Any, depth: int) -> None:
    """Subclasses and other containers, as ``regopy.Input`` maps them."""
    if isinstance(value, bool):
        _in_bool(handle, bool(value))
    elif isinstance(value, str):
        _in_str(handle, str.encode(value))
    elif isinstance(value, int):
        _push(handle, int(value), depth)
    elif isinstance(value, float):
        _in_float(handle, float(value))
    elif isinstance(value, Mapping):
        _push(handle, dict(value), depth)
    elif isinstance(value, Set):
        if depth > _MAX_INPUT_DEPTH:
            raise PolicyEvalError(f"the input is nested deeper than {_MAX_INPUT_DEPTH} levels")
        for item in value:
            _push(handle, item, depth + 1)
        _in_set(handle, len(value))
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        _push(handle, list(value), depth)
    else:
        raise PolicyEvalError(f"the input holds a {type(value).__name__}, which is not a JSON value")


def interpreter(strict_builtins: bool = False) -> Any:
    interpreter = regopy.Interpreter()
    interpreter.log_level = regopy.LogLevel.NONE
    if strict_builtins:
        interpreter.strict_built_in_errors = True
    return interpreter


class Interpreters:
    """Idle interpreters of one bundle, reused across evaluations (a new one costs a builtins
    table and its first query warms up). Thread-safe; each worker takes its own, so at most
    as many exist as evaluations ever ran at once. A query keeps no state in the interpreter
    but its input, which the next ``set_input`` replaces."""

    def __init__(self, strict_builtins: bool = False) -> None:
        self.strict_builtins = strict_builtins
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def take(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return interpreter(self.strict_builtins)

    def give_back(self, used: Any) -> None:
        self._idle.put(used)


def query(interpreter: Any, bundle: Any, entrypoint: str, *, json_shortcut: bool = True) -> Any:
    """Run one entrypoint; return its value (``None`` when undefined) or raise PolicyEvalError.
    ``json_shortcut=False`` always reads the value tree (benchmarks compare the two).

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
        if json_shortcut and text.count('"') == 2 and text.startswith(_EXPRESSIONS):
            # No string anywhere in the value (the common "nothing found" answer): the JSON
            # text is exact, and one parse beats a C call per node of the value tree.
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                return orjson.loads(text)["expressions"][0]
        # rego-cpp's JSON text does not escape quotes inside strings, so read the value tree.
        terms = rego_shared.rego.regoOutputExpressionsAtIndex(output, 0)
        if not terms or rego_shared.rego.regoNodeSize(terms) < 1:
            raise PolicyEvalError(f"unexpected engine output: {text[:200]}")
        return _value(rego_shared.rego_node_get(terms, 0), 0)
    finally:
        rego_shared.rego.regoFreeOutput(output)


_EXPRESSIONS = '{"expressions":['
_TERM, _SCALAR, _ARRAY, _SET, _OBJECT = 1002, 1003, 1004, 1005, 1006
_INT, _FLOAT, _STRING, _TRUE, _FALSE, _BOOLEAN, _NULL = 1008, 1009, 1010, 1011, 1012, 1111, 1013
_MAX_NESTING = 64


def _string(raw: str) -> str:
    # A string literal's node keeps its JSON quotes; a computed string's node does not.
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw[1:-1]  # a computed string quoted but not escaped (e.g. holding ``\\.``)
        if isinstance(decoded, str):
            return decoded
    elif "\\" in raw:
        # Unquoted text is kept escaped: input strings (pushed escaped, see ``_push``) and
        # ``sprintf("%v")`` of a set/object/array (``{\\"a\\"}``, which OPA prints ``{"a"}``).
        return _unescape(raw)
    return raw


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(text: str) -> str:
    """JSON string escapes undone left to right; an unknown escape is kept as written."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "u" and i + 6 <= n and all(c in "0123456789abcdefABCDEF" for c in text[i + 2 : i + 6]):
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        else:
            out.append(ch)
            i += 1
    return "".join(out)


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
    return bool(interpreter().is_builtin(name))
