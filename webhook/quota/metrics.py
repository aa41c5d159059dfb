"""Prometheus gauges of GPU quota: used / reserved / limit per quota key, in GPUs.

The lead's ``/metrics`` handler appends these lines (text exposition format 0.0.4).
"""

from __future__ import annotations

from fractions import Fraction

from webhook.quota.ledger import Ledger
from webhook.quota.model import QuotaModel

_GAUGES = (
    ("used", "GPUs held by pods the watch has seen, per quota"),
    ("reserved", "GPUs reserved by admitted pods not yet seen by the watch, per quota"),
    ("limit", "GPU limit of the quota"),
)


def prometheus_lines(ledger: Ledger, model: QuotaModel) -> list[str]:
    """``portcullis_gpu_quota_{used,reserved,limit}_gpus{quota,key,scope}`` lines, HELP/TYPE first."""
    views = list(ledger.quotas())
    lines: list[str] = []
    for field, help_text in _GAUGES:
        name = f"portcullis_gpu_quota_{field}_gpus"
        lines += [f"# HELP {name} {help_text}.", f"# TYPE {name} gauge"]
        for view in views:
            value = float(Fraction(getattr(view, field), model.scale))
            labels = f'quota="{_esc(view.rule)}",key="{_esc(view.key)}",scope="{_esc(view.scope)}"'
            lines.append(f"{name}{{{labels}}} {value:g}")
    lines += [
        "# HELP portcullis_gpu_ledger_pods GPU pods in the usage ledger.",
        "# TYPE portcullis_gpu_ledger_pods gauge",
        f"portcullis_gpu_ledger_pods {len(ledger)}",
    ]
    return lines


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
