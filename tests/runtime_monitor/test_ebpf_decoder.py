"""The generated bpftrace program and the decoder of its JSON records (no kernel needed).

Records are written here exactly as bpftrace 0.17 prints them with ``-f json`` (checked against
the real binary by tests/runtime_monitor/test_monitor_evasion.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from webhook.runtime.sources import bpftrace_program as bp
from webhook.runtime.sources import ebpf
from webhook.runtime.sources.base import RawEvent

PID = 4242
CHUNK = bp.CHUNK


def program(types: set[str] | None, exists: bool = True) -> bp.Program:
    return bp.generate(types, self_pid=PID, exists=lambda _s: exists)


def rec(*data: Any) -> str:
    return json.dumps({"type": "value", "data": list(data)})


def probe_id(evt: str) -> int:
    return bp.REC_SYSCALL + [p.evt for p in bp.PROBES].index(evt)


def _top_level_items(text: str) -> int:
    depth, items = 0, 1
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            items += 1
    return items


@pytest.mark.parametrize("probe", bp.PROBES, ids=lambda p: p.evt)
def test_each_probe_prints_the_fields_the_decoder_expects(probe: bp.Probe) -> None:
    text = program({probe.evt}).text
    rid = bp.REC_SYSCALL + bp.PROBES.index(probe)
    tuples = re.findall(rf"print\(\(({rid}, .*)\)\);", text)
    assert tuples, f"no event record for {probe.evt}"
    for body in tuples:
        n = _top_level_items(body)
        assert n == 7 + len(probe.params) - (len(probe.strings) - 1 if probe.strings else 0), body


def test_only_the_requested_syscalls_are_traced_but_process_state_always_is() -> None:
    text = program({"openat"}).text
    assert "sys_enter_openat " in text
    assert "sys_enter_connect" not in text
    assert "sched_process_exec" in text
    assert "sched_process_exit" in text
    for state in ("chdir", "fchdir", "dup", "dup2", "dup3"):  # cwd and fds stay true
        assert f"sys_enter_{state} " in text
    assert f"pid != {PID}" in text
    assert "BEGIN" not in text
    assert "END" not in text


def test_unknown_and_missing_types_are_reported_not_fatal() -> None:
    prog = program({"openat", "init_module", "read"}, exists=False)
    assert prog.missing["read"] == "not traced by the eBPF source"
    assert "no tracepoint syscalls:sys_enter_init_module" in prog.missing["init_module"]
    assert "openat" not in prog.types


def test_none_means_every_supported_type() -> None:
    assert program(None).types == bp.SUPPORTED_TYPES


def decoder() -> ebpf.LineDecoder:
    return ebpf.LineDecoder(ignore_pids=(99,), clock_offset=1000)


def test_an_openat_record_becomes_a_raw_event() -> None:
    ev = decoder().decode(rec(probe_id("openat"), 5, 10, 11, 0, 3, 77, 524288, 0, -100, "/etc/shadow"))
    assert ev is not None
    assert (ev.type, ev.ts, ev.pid, ev.tid, ev.uid, ev.res) == ("openat", 1005, 10, 11, 0, 3)
    assert ev.params == {"flags": 524288, "mode": 0, "dirfd": -100, "name": "/etc/shadow", "cgroup": 77}


@pytest.mark.parametrize("name", ["/tmp/a\tb", "/tmp/new\nline", '/tmp/q"uote', "/tmp/back\\slash", "/tmp/\x01"])
def test_control_characters_in_a_path_are_data_not_separators(name: str) -> None:
    ev = decoder().decode(rec(probe_id("openat"), 5, 10, 11, 0, 3, 1, 0, 0, -100, name))
    assert ev is not None
    assert ev.params["name"] == name


def test_bytes_above_0x7f_come_back_as_the_bytes_the_process_passed() -> None:
    # bpftrace 0.17 prints each byte >= 0x80 of a string as \uffffffXX (a sign-extended char)
    escaped = "/tmp/\\uffffffc3\\uffffffa9-\\uffffffff"
    line = rec(probe_id("openat"), 5, 10, 11, 0, 3, 1, 0, 0, -100, "@").replace("@", escaped)
    ev = decoder().decode(line)
    assert ev is not None
    assert ev.params["name"] == "/tmp/é-" + b"\xff".decode("utf-8", "surrogateescape")
    # a literal backslash followed by the same letters is not one of those escapes
    literal = rec(probe_id("openat"), 5, 10, 11, 0, 3, 1, 0, 0, -100, "/tmp/\\uffffffc3")
    ev = decoder().decode(literal)
    assert ev is not None
    assert ev.params["name"] == "/tmp/\\uffffffc3"


def test_a_long_path_is_joined_from_its_pieces() -> None:
    path = "/" + "a" * 300 + "/etc/shadow"
    pieces = [path[i : i + CHUNK] for i in range(0, len(path), CHUNK)]
    d = decoder()
    for piece in pieces[1:]:
        assert d.decode(rec(0, 11, 0, piece)) is None
    ev = d.decode(rec(probe_id("openat"), 5, 10, 11, 0, 3, 1, 0, 0, -100, pieces[0]))
    assert ev is not None
    assert ev.params["name"] == path
    assert "truncated" not in ev.params


def test_pieces_after_a_short_one_are_not_part_of_the_string() -> None:
    d = decoder()
    d.decode(rec(0, 11, 0, "garbage"))
    ev = d.decode(rec(probe_id("openat"), 5, 10, 11, 0, 3, 1, 0, 0, -100, "/etc/passwd"))
    assert ev is not None
    assert ev.params["name"] == "/etc/passwd"


def test_a_path_longer_than_the_source_carries_is_flagged() -> None:
    d = decoder()
    for _ in range(bp.MAX_PIECES - 1):
        d.decode(rec(0, 11, 0, "b" * CHUNK))
    ev = d.decode(rec(probe_id("openat"), 5, 10, 11, 0, 3, 1, 0, 0, -100, "/" + "a" * (CHUNK - 1)))
    assert ev is not None
    assert ev.params["truncated"] is True
    assert d.truncated == 1


def test_side_strings_attach_to_the_next_event_of_the_same_thread() -> None:
    d = decoder()
    assert d.decode(rec(0, 11, 1, "/tmp/old")) is None
    assert d.decode(rec(0, 12, 1, "/elsewhere")) is None
    ev = d.decode(rec(probe_id("renameat2"), 5, 10, 11, 0, 0, 1, -100, "/tmp/new"))
    assert ev is not None
    assert ev.params == {"dirfd": -100, "newpath": "/tmp/new", "oldpath": "/tmp/old", "cgroup": 1}


def exec_record(tid: int = 11, fname: str = "/bin/echo", argv: bytes = b"/bin/echo\x00hi\x00") -> list[str]:
    out = [rec(1, tid, off, list(argv[off : off + bp.ARGV_PIECE].ljust(bp.ARGV_PIECE, b"X")))
           for off in range(0, len(argv), bp.ARGV_PIECE)]  # fmt: skip
    out += [rec(0, tid, bp.SLOT_COMM, "echo"), rec(0, tid, bp.SLOT_CG, "docker-" + "ab" * 32 + ".scope"),
            rec(0, tid, bp.SLOT_CG + 1, "system.slice"), rec(0, tid, bp.SLOT_EXE, "echo"),
            rec(0, tid, bp.SLOT_PWD, "tmp")]  # fmt: skip
    out.append(rec(4, 5, 10, tid, 0, 9, 1, 4294967295, 34816, len(argv), 0x1FF, 0x1FF, 1, 0xEF53, fname))
    return out


def decode_all(d: ebpf.LineDecoder, lines: list[str]) -> list[RawEvent]:
    return [e for e in map(d.decode, lines) if e is not None]


def test_exec_carries_argv_bytes_exactly_and_what_the_task_said() -> None:
    argv = b"grep\x00a\\|b\x00tab\there\x00new\nline\x00\\x41\x00"
    (ev,) = decode_all(decoder(), exec_record(argv=argv))
    assert ev.params["argv"] == ["grep", "a\\|b", "tab\there", "new\nline", "\\x41"]
    assert (ev.comm, ev.params["tty"], ev.params["ppid"], ev.params["cwd_name"]) == ("echo", 34816, 1, "tmp")
    assert ev.params["cgroup_names"][0] == "system.slice/docker-" + "ab" * 32 + ".scope"


def test_a_long_argument_list_is_whole() -> None:
    argv = b"sh\x00" + b"x" * 500 + b"\x00-c\x00cat /etc/shadow\x00"
    (ev,) = decode_all(decoder(), exec_record(argv=argv))
    assert ev.params["argv"][-2:] == ["-c", "cat /etc/shadow"]
    assert "truncated" not in ev.params


def test_lost_events_ready_and_malformed_lines_are_counted() -> None:
    d = decoder()
    assert d.decode('{"type": "attached_probes", "data": {"probes": 12}}') is None
    assert d.decode('{"type": "printf", "data": "READY\\n"}') is None
    assert d.decode('{"type": "lost_events", "data": {"events": 17}}') is None
    assert d.decode("openat\t5\t10") is None
    assert d.decode(rec(probe_id("openat"), 5, 10)) is None
    assert d.decode(rec(probe_id("openat"), 5, 10, 11, 0, 3, 1, 0, 0, -100, "/x", "extra")) is None
    assert (d.ready, d.lost, d.malformed) == (True, 17, 3)


def test_events_of_ignored_pids_are_dropped_and_counted() -> None:
    d = decoder()
    assert d.decode(rec(probe_id("openat"), 5, 99, 99, 0, 3, 1, 0, 0, -100, "/x")) is None
    assert d.ignored == 1


def test_fork_records_carry_the_parent() -> None:
    ev = decoder().decode(rec(2, 5, 20, 20, 10, 0, 1))
    assert ev is not None
    assert (ev.type, ev.pid, ev.params) == ("F", 20, {"ppid": 10, "cgroup": 1})


def test_events_read_out_of_order_across_cpus_are_released_sorted() -> None:
    def e(ts: int) -> RawEvent:
        return RawEvent("openat", ts, 1, 1, 0, "x", 0, {})

    r = ebpf.Reorder(window_ns=10)
    assert r.push([e(5), e(1)]) == []  # nothing is 10 ns older than the newest yet
    out = r.push([e(3), e(20)])
    assert [x.ts for x in out] == [1, 3, 5]
    assert [x.ts for x in r.flush()] == [20]
    assert ebpf.Reorder(0).push([e(2), e(1)])[0].ts == 2  # window 0: pass through


def test_a_short_argument_block_read_back_from_its_end_is_placed_by_offset() -> None:
    # the probe reads the last piece so that it ends at arg_end (past it may be unmapped)
    argv = b"true\x00m1\x00"
    piece = (b"S" * (bp.ARGV_PIECE - len(argv)) + argv)[-bp.ARGV_PIECE :]
    lines = [rec(1, 11, len(argv) - bp.ARGV_PIECE, list(piece))]
    lines.append(rec(4, 5, 10, 11, 0, 1, 1, 0, 0, len(argv), 0, 0, 0, 0x01021994, "/dev/fd/3"))
    (ev,) = decode_all(decoder(), lines)
    assert ev.params["argv"] == ["true", "m1"]
    assert ev.params["exe_nlink"] == 0


def test_strings_pending_when_records_are_lost_never_reach_a_later_event() -> None:
    d = decoder()
    d.decode(rec(0, 11, 1, "/etc/shadow"))  # oldpath of a rename whose event record was lost
    d.decode('{"type": "lost_events", "data": {"events": 1}}')
    ev = d.decode(rec(probe_id("renameat2"), 5, 10, 11, 0, 0, 1, -100, "/tmp/new"))
    assert ev is not None
    assert ev.params["oldpath"] == ""
