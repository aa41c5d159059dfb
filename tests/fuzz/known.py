"""Crashes the fuzzers found that are not fixed yet: (exception type, module, source line).

The generic fuzz tests tolerate exactly these (so the suite stays green while their owners fix
them); each has an explicit ``xfail(strict=True)`` regression test next to its target. When a fix
lands, the line changes (so the fuzzers stop tolerating it) and the regression test XPASSes, a
failure under strict xfail: then remove its mark and its entry here.
"""

from __future__ import annotations

import traceback

Signature = tuple[str, str, str]

KNOWN: frozenset[Signature] = frozenset(
    {
        # privilege: values of the wrong JSON type reach a frozenset membership test (unhashable)
        ("TypeError", "checks/pss/baseline.py", "bad = [cap for cap in added if cap not in BASELINE_CAPABILITIES]"),
        (
            "TypeError",
            "checks/pss/baseline.py",
            'if profile is not None and mapping(profile).get("type") not in _APPARMOR_TYPES:',
        ),
        ("TypeError", "checks/pss/baseline.py", "if kind not in allowed_types:"),
        ("TypeError", "checks/pss/baseline.py", "if name not in allowed:"),
        (
            "TypeError",
            "checks/pss/baseline.py",
            'if profile is not None and mapping(profile).get("type") not in SECCOMP_TYPES:',
        ),
        ("TypeError", "checks/pss/restricted.py", 'if mapping(pod_profile).get("type") in SECCOMP_TYPES:'),
        ("TypeError", "checks/pss/restricted.py", 'if mapping(profile).get("type") not in SECCOMP_TYPES:'),
        # gpu: resources, requests, limits, overhead, nodeSelector, affinity used as objects unchecked
        (
            "TypeError",
            "quota/requests.py",
            "_add(total, {k: quantity.milli(v) for k, v in overhead.items() if counts(k)})",
        ),
        ("TypeError", "quota/requests.py", 'requests = resources.get("requests") or {}'),
        ("TypeError", "quota/requests.py", "for name, value in requests.items():"),
        ("TypeError", "quota/requests.py", "for name, value in limits.items():"),
        ("TypeError", "quota/model.py", "models = frozenset((str(selector[label]),))"),
        ("TypeError", "quota/model.py", 'for expr in term.get("matchExpressions") or ():'),
        ("TypeError", "quota/model.py", 'if expr.get("key") == label and expr.get("operator") == "In":'),
        ("TypeError", "quota/requests.py", 'resources = container.get("resources")'),
        ("TypeError", "quota/model.py", 'affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get('),
        # gpu: with requests_equal_limits, requests.mismatches parses quantities outside GpuCheck.run's
        # QuantityError guard; QuantityError is an InputError, which Pipeline._guarded re-raises, and the
        # server catches only ReviewError: HTTP 500
        (
            "QuantityError",
            "quota/quantity.py",
            "raise QuantityError(f\"quantity {value!r} must be a number or a string such as '1', '500m', '2Ki'\")",
        ),
        (
            "QuantityError",
            "quota/quantity.py",
            "raise QuantityError(f\"quantity {text!r} is not valid (expected e.g. '1', '500m', '2Ki', '1e3')\")",
        ),
        (
            "QuantityError",
            "quota/quantity.py",
            'raise QuantityError(f"quantity {text!r} has an unknown suffix {suffix!r} '
            '(use Ki, Mi, m, k, M, G, e3, ...)")',
        ),
        # audit: base64.b64decode(str, validate=True) raises ValueError (not binascii.Error) on non-ASCII
        ("ValueError", "audit/note.py", "raw = base64.b64decode(parts[2], validate=True)"),
        ("ValueError", "audit/note.py", "root = base64.b64decode(root_s, validate=True)"),
        ("ValueError", "audit/proofs.py", "hashes = [base64.b64decode(h, validate=True) for h in rest[1:]]"),
        ("ValueError", "audit/proofs.py", "record = base64.b64decode(extra, validate=True)"),
        ("ValueError", "audit/proofs.py", "index = int(rest[0][6:])"),
        # YAML: PyYAML raises ValueError for an impossible timestamp (2001-13-01), not YAMLError
    }
)


# Functions that read nested fields assuming their types throughout: any TypeError/AttributeError
# raised in them is the same known bug (validate the shape once, at the top, then read).
TYPE_CONFUSED: frozenset[tuple[str, str]] = frozenset(
    {
        ("quota/model.py", "gpu_models"),
        ("quota/model.py", "_term_values"),
        ("quota/requests.py", "container_requests"),
        ("quota/requests.py", "pod_requests"),
        ("quota/requests.py", "mismatches"),
    }
)


def _innermost(exc: BaseException) -> traceback.FrameSummary | None:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/webhook/" in f.filename]
    return frames[-1] if frames else None


def signature(exc: BaseException) -> Signature:
    """(exception type, module under webhook/, source line) of the innermost project frame;
    AttributeError is named TypeError."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/webhook/" in f.filename]
    if not frames:
        return type(exc).__name__, "?", "?"
    frame = frames[-1]
    # AttributeError and TypeError are one bug class here (a value of the wrong type): one name.
    name = "TypeError" if isinstance(exc, AttributeError | TypeError) else type(exc).__name__
    return name, frame.filename.rsplit("/webhook/", 1)[1], (frame.line or "").strip()


def is_known(exc: BaseException) -> bool:
    sig = signature(exc)
    if sig in KNOWN:
        return True
    frame = _innermost(exc)
    return sig[0] == "TypeError" and frame is not None and (sig[1], frame.name) in TYPE_CONFUSED
