"""Threads parked inside traced syscalls must not blind the kernel side.

Both eBPF backends keep each traced call's arguments from its entry to its exit in a table sized
for a number of threads (bpftrace: one map per syscall; ring buffer: one table). An attacker who
parks more threads than that inside traced calls (opens of FIFOs nobody writes to block for as
long as it likes) used to make every later call leave no trace at all. Now such a call is a lost
event: counted by the source and said by the monitor as Falco's "syscall event drop" alert.
Real kernel, real threads; the table is shrunk to 2 so that 4 parked threads fill it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from monitor_session import skip_unless_backend

from webhook.runtime.sources import ebpf, ringbuf

PARKED = r"""
import os, sys, threading, time
fifos = sys.argv[1:]
threads = [threading.Thread(target=lambda f=f: os.close(os.open(f, os.O_RDONLY))) for f in fifos]
for t in threads:
    t.start()
time.sleep(0.5)  # every thread is now inside openat, holding a slot of the table
os.close(os.open("/etc/hostname", os.O_RDONLY))  # its call finds no slot
for f in fifos:  # let the parked opens return
    os.close(os.open(f, os.O_WRONLY))
for t in threads:
    t.join()
"""


@pytest.mark.root
@pytest.mark.ebpf
@pytest.mark.parametrize("backend", ["bpftrace", "ringbuf"])
async def test_a_full_table_of_calls_in_progress_is_counted_lost_not_silent(backend: str, tmp_path: Path) -> None:
    skip_unless_backend(backend)
    fifos = [str(tmp_path / f"fifo{i}") for i in range(4)]
    for f in fifos:
        os.mkfifo(f)
    source = (ebpf.EbpfSource if backend == "bpftrace" else ringbuf.RingbufSource)({"openat"}, inflight_slots=2)
    await source.start()

    async def read() -> None:
        async for _batch in source.batches():
            pass

    async def counted() -> None:
        while not source.decoder.lost:  # a batch of only a loss count yields no events
            await asyncio.sleep(0.05)

    reader = asyncio.create_task(read())
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PARKED, *fifos)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await asyncio.wait_for(counted(), 10)  # the ring buffer's loader reports the count each second
    finally:
        source.interrupt()
        await asyncio.gather(reader, return_exceptions=True)
        await source.close()
    assert source.decoder.lost >= 1
    assert source.stats()["kernel_lost"] >= 1


@pytest.mark.parametrize("make", [ebpf.EbpfSource, ringbuf.RingbufSource])
def test_the_table_size_is_checked(make: type) -> None:
    with pytest.raises(ValueError, match="inflight_slots"):
        make({"openat"}, inflight_slots=0)
