"""Prometheus text-format metrics for the webhook: cheap to update on the hot path.

A tiny registry of our own instead of a client library: the hot path only increments dict
entries; formatting happens when /metrics is scraped.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable

# Seconds; admission answers are expected in the low milliseconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

GaugeSource = Callable[[], Iterable[tuple[str, dict[str, str], float]]]
# A check's own metrics: a mapping of name -> value, or ready-made exposition lines.
CheckMetrics = Callable[[], "dict[str, float] | list[str]"]


class Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.sum += value


class WebhookMetrics:
    """Requests, decisions by result and check, latency, shed load, plus gauges from checks."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)  # (endpoint, code)
        self.decisions: defaultdict[tuple[str, str], int] = defaultdict(int)  # (endpoint, result)
        self.violations: defaultdict[tuple[str, str], int] = defaultdict(int)  # (check, mode)
        self.latency: dict[str, Histogram] = {}
        self._request_keys: dict[tuple[str, int], tuple[str, str]] = {}
        self.shed = 0
        self.cert_reloads: Callable[[], int] = lambda: 0  # set by the server to its TLS reloader
        self.gauge_sources: list[GaugeSource] = []
        self.check_sources: list[tuple[str, CheckMetrics]] = []

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        key = self._request_keys.get((endpoint, code))
        if key is None:  # once per endpoint and code: the hot path only increments
            key = self._request_keys[(endpoint, code)] = (endpoint, str(code))
            self.latency.setdefault(endpoint, Histogram())
        self.requests[key] += 1
        self.latency[endpoint].observe(seconds)

    def render(self) -> str:
        out: list[str] = []
        _counter(
            out,
            "portcullis_requests_total",
            "HTTP requests by endpoint and status code.",
            ("endpoint", "code"),
            self.requests,
        )
        _counter(
            out,
            "portcullis_decisions_total",
            "Admission decisions by endpoint and result.",
            ("endpoint", "result"),
            self.decisions,
        )
        _counter(
            out,
            "portcullis_violations_total",
            "Violations found, by check and mode.",
            ("check", "mode"),
            self.violations,
        )
        out.append("# HELP portcullis_requests_shed_total Requests refused because too many were in flight.")
        out.append("# TYPE portcullis_requests_shed_total counter")
        out.append(f"portcullis_requests_shed_total {self.shed}")
        out.append("# HELP portcullis_tls_reloads_total Serving certificate reloads.")
        out.append("# TYPE portcullis_tls_reloads_total counter")
        out.append(f"portcullis_tls_reloads_total {self.cert_reloads()}")
        out.append("# HELP portcullis_request_duration_seconds Time to answer a request.")
        out.append("# TYPE portcullis_request_duration_seconds histogram")
        for endpoint, h in sorted(self.latency.items()):
            cumulative = 0
            for bound, count in zip(h.buckets, h.counts, strict=False):
                cumulative += count
                out.append(
                    f'portcullis_request_duration_seconds_bucket{{endpoint="{endpoint}",le="{bound}"}} {cumulative}'
                )
            out.append(f'portcullis_request_duration_seconds_bucket{{endpoint="{endpoint}",le="+Inf"}} {h.count}')
            out.append(f'portcullis_request_duration_seconds_sum{{endpoint="{endpoint}"}} {h.sum:.6f}')
            out.append(f'portcullis_request_duration_seconds_count{{endpoint="{endpoint}"}} {h.count}')
        seen: set[str] = set()
        for source in self.gauge_sources:
            for name, labels, value in source():
                if name not in seen:
                    out.append(f"# TYPE {name} gauge")
                    seen.add(name)
                out.append(f"{name}{_labels(labels)} {value}")
        values: list[str] = []
        for check_id, check_source in self.check_sources:
            produced = check_source()
            if isinstance(produced, dict):
                values += [
                    f'portcullis_check_metric{{check="{_escape(check_id)}",name="{_escape(k)}"}} {float(v)}'
                    for k, v in sorted(produced.items())
                ]
            else:
                out.extend(produced)
        if values:
            out.append("# HELP portcullis_check_metric Counters and gauges a check keeps (e.g. the image cache).")
            out.append("# TYPE portcullis_check_metric untyped")
            out.extend(values)
        return "\n".join(out) + "\n"


def _counter(out: list[str], name: str, help_: str, keys: tuple[str, ...], values: dict[tuple[str, str], int]) -> None:
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} counter")
    for label_values, count in sorted(values.items()):
        out.append(f"{name}{_labels(dict(zip(keys, label_values, strict=True)))} {count}")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
