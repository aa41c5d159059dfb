"""The regopy / rego-cpp boundary: inputs, interpreters, one entrypoint query, and result
values read from the engine's value tree. Everything the C library returns is turned into
Python values or ``PolicyEvalError`` here; no other module calls regopy's C API.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
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

    def __init__(self, raw: str) -> None:
        super().__init__(raw)
        self.raw = raw


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
        raise CompileFailed("")
    return bundle


def new_input(document: Mapping[str, Any]) -> Any:
    """An engine input handle for ``document`` (the costly part of a query: a copy into rego-cpp)."""
    return regopy.Input(document)


def interpreter(strict_builtins: bool = False) -> Any:
    interpreter = regopy.Interpreter()
    interpreter.log_level = regopy.LogLevel.NONE
    if strict_builtins:
        interpreter.strict_built_in_errors = True
    return interpreter


def query(interpreter: Any, bundle: Any, entrypoint: str) -> Any:
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
    return bool(interpreter().is_builtin(name))
