"""The generated bpftrace program and the decoder of its lines (no kernel needed)."""

from __future__ import annotations

import re

import pytest

from webhook.runtime.sources import bpftrace_program, ebpf

PID = 4242


def program(types: set[str] | None, exists: bool = True) -> bpftrace_program.Program:
    return bpftrace_program.generate(types, self_pid=PID, exists=lambda _s: exists)


@pytest.mark.parametrize("probe", bpftrace_program.PROBES, ids=lambda p: p.evt)
def test_each_probe_prints_the_fields_the_decoder_expects(probe: bpftrace_program.Probe) -> None:
    text = program({probe.evt}).text
    lines = [ln for ln in text.splitlines() if f'printf("{probe.evt}\\t' in ln]
    assert lines, f"no printf for {probe.evt}"
    for line in lines:
        fmt = re.search(r'printf\("([^"]*)"', line).group(1)  # type: ignore[union-attr]
        assert fmt.count("\\t") == 6 + len(ebpf.SCHEMAS[probe.evt]), line


def test_only_the_requested_syscalls_are_traced_but_process_events_always_are() -> None:
    text = program({"openat"}).text
    assert "sys_enter_openat " in text
    assert "sys_enter_connect" not in text
    assert "sched_process_exec" in text
    assert "sched_process_exit" in text
    assert f"pid != {PID}" in text


def test_unknown_and_missing_types_are_reported_not_fatal() -> None:
    prog = program({"openat", "init_module", "read"}, exists=False)
    assert prog.missing["read"] == "not traced by the eBPF source"
    assert "no tracepoint syscalls:sys_enter_init_module" in prog.missing["init_module"]
    assert "openat" not in prog.types


def test_none_means_every_supported_type() -> None:
    assert program(None).types == bpftrace_program.SUPPORTED_TYPES


def decoder() -> ebpf.LineDecoder:
    return ebpf.LineDecoder(ignore_pids=(99,), clock_offset=1000)


def test_an_openat_line_becomes_a_raw_event() -> None:
    ev = decoder().decode("openat\t5\t10\t11\t0\tcat\t3\t524288\t0\t-100\t/etc/shadow")
    assert ev is not None
    assert (ev.type, ev.ts, ev.pid, ev.tid, ev.uid, ev.comm, ev.res) == ("openat", 1005, 10, 11, 0, "cat", 3)
    assert ev.params == {"flags": 524288, "mode": 0, "dirfd": -100, "name": "/etc/shadow"}


def test_s_lines_attach_to_the_next_event_of_the_same_thread() -> None:
    d = decoder()
    assert d.decode("S\t11\t/tmp/old") is None
    assert d.decode("S\t12\t/elsewhere") is None
    ev = d.decode("renameat2\t5\t10\t11\t0\tmv\t0\t-100\t/tmp/new")
    assert ev is not None
    assert ev.params == {"dirfd": -100, "newpath": "/tmp/new", "oldpath": "/tmp/old"}


def test_exec_takes_its_argv_from_the_a_line() -> None:
    d = decoder()
    d.decode("A\t11\t/bin/echo\\x00hello world\\x00a\\x09b\\x00")
    ev = d.decode("execve\t5\t10\t11\t0\techo\t0\t1\t-1\t/bin/echo")
    assert ev is not None
    assert ev.params["argv"] == ["/bin/echo", "hello world", "a\tb"]
    assert ev.params["ppid"] == 1


def test_a_literal_backslash_in_argv_is_kept() -> None:
    d = decoder()
    d.decode("A\t11\tgrep\\x00a\\|b\\x00")
    ev = d.decode("execve\t5\t10\t11\t0\tgrep\t0\t1\t-1\t/bin/grep")
    assert ev is not None
    assert ev.params["argv"] == ["grep", "a\\|b"]


def test_lost_events_ready_and_malformed_lines_are_counted() -> None:
    d = decoder()
    assert d.decode("Attaching 12 probes...") is None
    assert d.decode("READY\t1") is None
    assert d.decode("Lost 17 events") is None
    assert d.decode("openat\tnot-a-number\t10\t11\t0\tcat\t3\t0\t0\t-100\t/x") is None
    assert d.decode("openat\ttoo\tfew") is None
    assert (d.ready, d.lost, d.malformed) == (True, 17, 2)


def test_events_of_ignored_pids_are_dropped_and_counted() -> None:
    d = decoder()
    assert d.decode("openat\t5\t99\t99\t0\tbpftrace\t3\t0\t0\t-100\t/x") is None
    assert d.ignored == 1


def test_fork_lines_carry_the_parent() -> None:
    ev = decoder().decode("F\t5\t20\t10\t0\tbash")
    assert ev is not None
    assert (ev.type, ev.pid, ev.params) == ("F", 20, {"ppid": 10})


def test_events_read_out_of_order_across_cpus_are_released_sorted() -> None:
    from webhook.runtime.sources.base import RawEvent

    def e(ts: int) -> RawEvent:
        return RawEvent("openat", ts, 1, 1, 0, "x", 0, {})

    r = ebpf.Reorder(window_ns=10)
    assert r.push([e(5), e(1)]) == []  # nothing is 10 ns older than the newest yet
    out = r.push([e(3), e(20)])
    assert [x.ts for x in out] == [1, 3, 5]
    assert [x.ts for x in r.flush()] == [20]
    assert ebpf.Reorder(0).push([e(2), e(1)])[0].ts == 2  # window 0: pass through
