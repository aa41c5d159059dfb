"""Shared plumbing for the atheris harnesses: imports, the known-crash list, a JSON-aware mutator.

Each harness is a script: ``python tests/fuzz/atheris/fuzz_review.py [-runs=N] [libFuzzer flags]``
(default 20,000 runs). An exception outside the project's own errors and ``known.KNOWN`` is a
crash: libFuzzer prints it, writes ``crash-<sha1>`` (``-artifact_prefix=DIR/``) and exits non-zero.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import orjson

FUZZ_DIR = Path(__file__).resolve().parents[1]
ROOT = FUZZ_DIR.parents[1]
for p in (str(ROOT), str(FUZZ_DIR)):
    if p not in sys.path:
        sys.path.insert(0, p)

import known  # noqa: E402  (tests/fuzz/known.py, after the path is set)

DEFAULT_RUNS = 20_000
AWKWARD: list[Any] = [None, True, False, 0, -1, 2**63, 1.5, "", "x", "ALL", [], {}, [None], [[]], [{}], {"": []}]


def argv(default_runs: int = DEFAULT_RUNS) -> list[str]:
    """sys.argv with ``-runs=`` defaulted, so running the script alone is bounded."""
    args = list(sys.argv)
    if not any(a.startswith("-runs=") for a in args[1:]):
        args.append(f"-runs={default_runs}")
    return args


def tolerate(exc: BaseException, *allowed: type[BaseException]) -> None:
    """Re-raise ``exc`` unless it is one of ``allowed`` or a known, reported crash."""
    if isinstance(exc, allowed) or known.is_known(exc):
        return
    raise exc


def _nodes(doc: Any, out: list[tuple[Any, Any]]) -> None:
    """Every (container, key) in a JSON document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((doc, k))
            _nodes(v, out)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((doc, i))
            _nodes(v, out)


def mutate_json(data: bytes, seeds: list[bytes], max_size: int, rnd: random.Random) -> bytes:
    """Replace one value of a JSON document by a value of another type (or drop/dup it)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = orjson.loads(rnd.choice(seeds))
    nodes: list[tuple[Any, Any]] = []
    _nodes(doc, nodes)
    if nodes:
        parent, key = rnd.choice(nodes)
        op = rnd.random()
        if op < 0.7:
            parent[key] = rnd.choice(AWKWARD)
        elif op < 0.85 and isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent[key], list) and parent[key]:
            parent[key].append(parent[key][0])
    out = orjson.dumps(doc)
    return out if len(out) <= max_size else rnd.choice(seeds)[:max_size]
