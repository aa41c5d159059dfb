"""Config of the runtime monitor (``monitor:``); flags of ``portcullis monitor`` override it."""

from __future__ import annotations

from typing import Literal

import msgspec

from webhook.config.base import Section


class MonitorConfig(Section, frozen=True):
    """Where events come from, which rules judge them and where alerts go.

    ``rules`` (files or directories) empty means the rules shipped in the package
    (``webhook/runtime/rules/default/``). ``outputs`` take
    ``stdout``, ``file:PATH`` or ``http:URL``. ``queue_batches`` bounds the source → engine
    queue (a batch is one read of the source, up to 64 KiB of bpftrace output).
    """

    source: Literal["ebpf", "jsonl", "tetragon"] = "ebpf"
    input: str = "-"
    rules: list[str] = []
    match: Literal["first", "all"] = "all"
    disabled_tags: list[str] = []
    outputs: list[str] = msgspec.field(default_factory=lambda: ["stdout"])
    hostname: str = ""
    queue_batches: int = 64
    metrics_listen: str = ""
    # auto: the libbpf ring-buffer backend when clang/bpftool/libbpf-dev are present, else bpftrace
    ebpf_backend: Literal["auto", "ringbuf", "bpftrace"] = "auto"
    ring_bytes: int = 1 << 24  # the ring-buffer backend's one ring (a power of two)
    poll_ms: int = 5  # how often its reader looks at the ring when the kernel has not woken it
    bpftrace: str = "bpftrace"
    buffering: Literal["line", "full"] = "line"
    perf_rb_pages: int = 1024  # per-CPU perf ring of bpftrace, in 4 KiB pages
    reorder_ms: float = 5.0  # events are held this long to restore time order across CPUs
    kubelet_url: str = ""  # e.g. https://$(NODE_IP):10250; empty: no k8s.* fields
    kubelet_token_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    kubelet_ca_path: str = ""
    kubelet_insecure: bool = False
    ready_stale_s: float = 120.0  # /readyz fails when no event arrived for this long
    audit_log: str = ""
    audit_key: str = ""
    audit_origin: str = "portcullis.dev/monitor"

    def __post_init__(self) -> None:
        if self.queue_batches < 1:
            raise ValueError("monitor.queue_batches must be at least 1")
        if self.ring_bytes < 4096 or self.ring_bytes & (self.ring_bytes - 1):
            raise ValueError("monitor.ring_bytes must be a power of two of at least 4096")
        if not 1 <= self.poll_ms <= 1000:
            raise ValueError("monitor.poll_ms must be between 1 and 1000")
        if not self.ready_stale_s > 0:
            raise ValueError("monitor.ready_stale_s must be a positive number of seconds")
