"""Choose the eBPF backend of the live source (``portcullis monitor --ebpf-backend``).

``ringbuf`` (``sources.ringbuf``: libbpf, one ring buffer, batched wake-ups) is the default when
its toolchain is present; ``bpftrace`` (``sources.ebpf``) otherwise, with a warning saying what
to install. Both produce the same ``RawEvent``s; asking for ``ringbuf`` explicitly on a machine
that cannot build it is an error naming what is missing (``EbpfUnavailable``).
"""

from __future__ import annotations

import sys
from typing import Any

from webhook.runtime.sources import ebpf, ringbuf

__all__ = ["BACKENDS", "for_engine"]

BACKENDS = ("auto", "ringbuf", "bpftrace")


def for_engine(engine: Any, backend: str = "auto", *, warn: bool = True, **kwargs: Any) -> Any:
    """The live source for a compiled ``Engine``. ``kwargs`` reach the chosen backend's
    constructor when it takes them (bpftrace's ``perf_rb_pages`` does not concern the ring)."""
    if backend not in BACKENDS:
        raise ebpf.EbpfUnavailable(f"eBPF backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    common = {k: v for k, v in kwargs.items() if k in ("reorder_ms", "start_timeout")}
    if backend == "auto":
        missing = ringbuf.available()
        if missing:
            if warn:
                print(
                    "portcullis monitor: warning: using the bpftrace eBPF backend (slower): the ring-buffer "
                    f"backend needs {', '.join(missing)}",
                    file=sys.stderr,
                )
            backend = "bpftrace"
        else:
            backend = "ringbuf"
    if backend == "ringbuf":
        rb_args = {k: v for k, v in kwargs.items() if k in ("ring_bytes", "poll_ms", "wake_bytes", "cache")}
        return ringbuf.RingbufSource.for_engine(engine, **common, **rb_args)
    bt_args = {k: v for k, v in kwargs.items() if k in ("bpftrace", "buffering", "perf_rb_pages")}
    return ebpf.EbpfSource.for_engine(engine, **common, **bt_args)
