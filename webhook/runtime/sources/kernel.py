"""Choose the eBPF backend of the live source (``portcullis monitor --ebpf-backend``).

``ringbuf`` (``sources.ringbuf``: libbpf, one ring buffer, batched wake-ups) is the default when
it can be built here (clang, bpftool, libbpf-dev, kernel BTF, a writable cache); ``bpftrace``
(``sources.ebpf``) otherwise, with a warning saying why. Both produce the same ``RawEvent``s;
asking for ``ringbuf`` explicitly on a machine that cannot build it is an error naming what is
missing (``EbpfUnavailable``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from webhook.runtime.sources import bpf_build, ebpf, ringbuf

__all__ = ["BACKENDS", "for_engine"]

BACKENDS = ("auto", "ringbuf", "bpftrace")


def for_engine(engine: Any, backend: str = "auto", *, warn: bool = True, **kwargs: Any) -> Any:
    """The live source for a compiled ``Engine``. ``kwargs`` reach the chosen backend's
    constructor when it takes them (bpftrace's ``perf_rb_pages`` does not concern the ring)."""
    if backend not in BACKENDS:
        raise ebpf.EbpfUnavailable(f"eBPF backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    common = {k: v for k, v in kwargs.items() if k in ("reorder_ms", "start_timeout")}
    if backend == "auto":
        # Build now (cached per kernel after the first start) so a machine that cannot build it
        # (tools missing, read-only cache) runs bpftrace instead of failing at every restart.
        try:
            if os.geteuid() == 0:
                ebpf.ensure_tracefs()  # the probe table reads the syscalls' tracepoint formats
            bpf_build.build(kwargs.get("cache"))
            backend = "ringbuf"
        except (bpf_build.BuildUnavailable, OSError) as exc:
            if warn:
                print(f"portcullis monitor: warning: using the bpftrace eBPF backend (slower): {exc}", file=sys.stderr)
            backend = "bpftrace"
    if backend == "ringbuf":
        rb_args = {k: v for k, v in kwargs.items() if k in ("ring_bytes", "poll_ms", "wake_bytes", "cache")}
        return ringbuf.RingbufSource.for_engine(engine, **common, **rb_args)
    bt_args = {k: v for k, v in kwargs.items() if k in ("bpftrace", "buffering", "perf_rb_pages")}
    return ebpf.EbpfSource.for_engine(engine, **common, **bt_args)
