"""Progress and duration of background scans, as Prometheus text (served on ``/metrics``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ScanMetrics:
    """Counters and gauges of one scanner; ``lines()`` renders them for the webhook's /metrics."""

    judged: Counter[str] = field(default_factory=Counter)  # kind -> objects judged
    results: Counter[str] = field(default_factory=Counter)  # result -> results produced
    writes: Counter[str] = field(default_factory=Counter)  # create|replace|delete -> report writes
    conflicts: int = 0  # 409 answers to a report write (retried)
    write_errors: int = 0
    passes: int = 0  # full passes finished (every listed object judged once)
    listed: int = 0  # objects of the current pass
    done: int = 0  # of which judged
    queue: int = 0
    last_pass_seconds: float = 0.0
    leader: bool = False

    def lines(self) -> list[str]:
        out: list[str] = []
        _counter(out, "portcullis_scan_objects_judged_total", "Objects judged by scans.", "kind", self.judged)
        _counter(out, "portcullis_scan_results_total", "Report results produced, by result.", "result", self.results)
        _counter(out, "portcullis_scan_report_writes_total", "PolicyReport writes, by operation.", "op", self.writes)
        gauges = (
            (
                "portcullis_scan_report_conflicts_total",
                "counter",
                "Report writes answered 409.",
                self.conflicts,
            ),
            ("portcullis_scan_report_write_errors_total", "counter", "Report writes that failed.", self.write_errors),
            ("portcullis_scan_passes_total", "counter", "Full scan passes finished.", self.passes),
            ("portcullis_scan_pass_objects", "gauge", "Objects listed in the current pass.", self.listed),
            ("portcullis_scan_pass_judged", "gauge", "Objects of the current pass judged so far.", self.done),
            ("portcullis_scan_queue_depth", "gauge", "Objects waiting to be judged.", self.queue),
            (
                "portcullis_scan_last_pass_duration_seconds",
                "gauge",
                "Last full pass.",
                self.last_pass_seconds,
            ),
            ("portcullis_scan_leader", "gauge", "1 while this replica holds the scan lease.", int(self.leader)),
        )
        for name, kind, help_, value in gauges:
            out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {round(value, 6)}"]
        return out


def _counter(out: list[str], name: str, help_: str, label: str, values: Counter[str]) -> None:
    out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
    out += [f'{name}{{{label}="{key}"}} {n}' for key, n in sorted(values.items())]
