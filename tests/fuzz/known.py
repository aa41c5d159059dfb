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
        ("TypeError", "checks/pss/baseline.py", 'if profile is not None and mapping(profile).get("type") not in _APPARMOR_TYPES:'),
        ("TypeError", "checks/pss/baseline.py", "if kind not in allowed_types:"),
        ("TypeError", "checks/pss/baseline.py", "if name not in allowed:"),
        ("TypeError", "checks/pss/baseline.py", 'if profile is not None and mapping(profile).get("type") not in SECCOMP_TYPES:'),
        ("TypeError", "checks/pss/restricted.py", 'if mapping(pod_profile).get("type") in SECCOMP_TYPES:'),
        ("TypeError", "checks/pss/restricted.py", 'if mapping(profile).get("type") not in SECCOMP_TYPES:'),
        # gpu: resources, requests, limits, overhead, nodeSelector, affinity used as objects unchecked
        ("AttributeError", "quota/requests.py", "_add(total, {k: quantity.milli(v) for k, v in overhead.items() if counts(k)})"),
        ("AttributeError", "quota/requests.py", 'requests = resources.get("requests") or {}'),
        ("AttributeError", "quota/requests.py", "for name, value in requests.items():"),
        ("AttributeError", "quota/requests.py", "for name, value in limits.items():"),
        ("TypeError", "quota/model.py", "models = frozenset((str(selector[label]),))"),
        ("AttributeError", "quota/model.py", "models = frozenset((str(selector[label]),))"),
        ("AttributeError", "quota/model.py", 'for expr in term.get("matchExpressions") or ():'),
        ("AttributeError", "quota/model.py", 'if expr.get("key") == label and expr.get("operator") == "In":'),
        ("AttributeError", "quota/requests.py", 'resources = container.get("resources")'),
        ("AttributeError", "quota/model.py", 'affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get('),
        # admission pipeline: exemption selectors collect raw values into sets (unhashable)
        ("TypeError", "admission/pipeline.py", 'runtime_classes = {p.spec.get("runtimeClassName") for p in pods}'),
        ("TypeError", "admission/pipeline.py", 'service_accounts = {p.spec.get("serviceAccountName") or "default" for p in pods}'),
    }
)


def signature(exc: BaseException) -> Signature:
    """(exception type, module under webhook/, source line) of the innermost project frame."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/webhook/" in f.filename]
    if not frames:
        return type(exc).__name__, "?", "?"
    frame = frames[-1]
    return type(exc).__name__, frame.filename.rsplit("/webhook/", 1)[1], (frame.line or "").strip()


def is_known(exc: BaseException) -> bool:
    return signature(exc) in KNOWN
