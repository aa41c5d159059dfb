"""Recorded streams: ``portcullis rules test RULES --events big.jsonl`` against ``sysdig -r`` on the
same recording as scap files, with the same upstream rules, side by side in one run (and sysdig reading the recording with no rules).

The 14 conformance traces are replicated (each ``--events / 5,731`` times): every trace's scap is
rewritten with its event blocks repeated (timestamps shifted so time keeps moving forward), and
its JSON-lines events (what sysdig shows for it) are repeated the same number of times into one
``big.jsonl``. sysdig 0.29.3 (Debian's ``sysdig`` package) reads each big scap with the OR of
the conditions of every enabled rule it accepts (as ``../shared/conformance/falco/expected/
rules.json`` flattened them; 70 of the 81 enabled rules), as a display filter (``-d``, the way
the conformance data was made), printing ``%evt.num`` of the matches to /dev/null. Portcullis runs
all 81 enabled rules of the three files.

Both sides are timed as whole commands (wall clock and the children's CPU time), interleaved,
best of ``--repeat``. Events/s counts the events sysdig shows (the JSON lines): the scaps also hold
internal events (``procinfo``) that only sysdig reads, so its figure is slightly understated.
Portcullis' start-up (imports, loading and compiling the rules) is also measured alone, with an
empty events file, so its streaming rate can be given apart. Figures come from a shared machine.

    python bench/bench_recorded.py [--events N] [--repeat R] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "conformance" / "falco"
RULE_FILES = [
    DATA / "rules" / n for n in ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml")
]
# scap block types holding one event; the timestamp follows the block header and the cpu id
# (EV: 0x204, EV_V2: 0x216) or the cpu id and a u32 of flags (EVF: 0x208, EVF_V2: 0x217).
_TS_OFFSET = {0x204: 10, 0x216: 10, 0x221: 10, 0x208: 14, 0x217: 14, 0x222: 14}


def scap_blocks(path: Path) -> list[tuple[int, bytes]]:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    out, off = [], 0
    while off < len(data):
        kind, length = struct.unpack_from("<II", data, off)
        if length < 12 or off + length > len(data):
            raise SystemExit(f"{path}: bad scap block at byte {off}")
        out.append((kind, data[off : off + length]))
        off += length
    return out


def replicate_scap(src: Path, dst: Path, times: int) -> None:
    """The trace with its event blocks written ``times`` times, each copy later in time."""
    blocks = scap_blocks(src)
    first = next((i for i, (k, _) in enumerate(blocks) if k in _TS_OFFSET), len(blocks))
    head, events = blocks[:first], blocks[first:]
    stamps = [struct.unpack_from("<Q", b, _TS_OFFSET[k])[0] for k, b in events if k in _TS_OFFSET]
    stamps = [t for t in stamps if t]  # open-multiple-files holds one event stamped 0: left as is
    span = (max(stamps) - min(stamps) + 1_000_000) if stamps else 0
    with open(dst, "wb") as out:
        for _, b in head:
            out.write(b)
        for rep in range(times):
            for kind, b in events:
                at = _TS_OFFSET.get(kind)
                if at is not None and rep and struct.unpack_from("<Q", b, at)[0]:
                    b = bytearray(b)
                    struct.pack_into("<Q", b, at, struct.unpack_from("<Q", b, at)[0] + rep * span)
                out.write(b)


def sysdig_filter() -> tuple[str, int]:
    rules = json.loads((DATA / "expected" / "rules.json").read_text())["rules"]
    accepted = [r["condition"] for r in rules if r["enabled"] and r["sysdig"] == "accepted"]
    return " or ".join(f"({c})" for c in accepted), len(accepted)


def timed(argv: list[str], stdin_null: bool = True) -> tuple[float, float, int]:
    """(wall s, children's CPU s, lines printed) of one command; its stderr is kept if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout.count(b"\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="build the recordings in this directory and keep them")
    args = ap.parse_args()
    sysdig = shutil.which("sysdig")
    if sysdig is None:
        raise SystemExit("sysdig not found: apt-get install -y sysdig (Debian's 0.29.3)")

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-recorded-"))
    work.mkdir(parents=True, exist_ok=True)
    traces = sorted(p.stem for p in (DATA / "events").glob("*.jsonl"))
    lines = {t: [ln for ln in (DATA / "events" / f"{t}.jsonl").read_bytes().splitlines() if ln.strip()] for t in traces}
    base = sum(len(v) for v in lines.values())
    times = max(1, -(-args.events // base))
    big = work / "big.jsonl"
    with open(big, "wb") as out:
        for t in traces:
            chunk = b"".join(ln + b"\n" for ln in lines[t])
            for _ in range(times):
                out.write(chunk)
    for t in traces:
        replicate_scap(DATA / "traces" / f"{t}.scap", work / f"{t}.scap", times)
    empty = work / "empty-events.jsonl"
    empty.write_bytes(b"")
    n = base * times
    flt, accepted = sysdig_filter()

    ours = [sys.executable, "-m", "webhook", "rules", "test", *map(str, RULE_FILES), "--hostname", "h", "--events"]
    best: dict[str, tuple[float, float]] = {}
    alerts = matched = 0

    def keep(name: str, wall: float, cpu: float) -> None:
        old = best.get(name)
        best[name] = (min(old[0], wall), min(old[1], cpu)) if old else (wall, cpu)

    for _ in range(args.repeat):  # interleaved: each round runs every side once
        wall = cpu = 0.0
        matched = 0
        for t in traces:
            w, c, m = timed([sysdig, "-d", "-r", str(work / f"{t}.scap"), "-p", "%evt.num", flt])
            wall, cpu, matched = wall + w, cpu + c, matched + m
        keep("sysdig", wall, cpu)
        wall = cpu = 0.0
        for t in traces:  # the floor: sysdig reading and parsing the recording, no rules to run
            w, c, _ = timed([sysdig, "-r", str(work / f"{t}.scap"), "-p", "%evt.num", "evt.num = 0"])
            wall, cpu = wall + w, cpu + c
        keep("sysdig-read", wall, cpu)
        w, c, alerts = timed([*ours, str(big)])
        keep("portcullis", w, c)
        w, c, _ = timed([*ours, str(empty)])
        keep("startup", w, c)

    sw, sc = best["sysdig"]
    pw, pc = best["portcullis"]
    uw, uc = best["startup"]
    print(
        f"recording: {n:,} events ({len(traces)} conformance traces x {times}); big.jsonl {big.stat().st_size / 1e6:,.0f} MB"
    )
    print(
        f"rules: portcullis 81 enabled upstream rules; sysdig the OR of the {accepted} it accepts (-d display filter)"
    )
    print(f"matches: sysdig {matched:,} events; portcullis {alerts:,} alerts")
    print(
        f"sysdig -r (14 files)       : {n / sw:12,.0f} events/s wall, {n / sc:12,.0f} events/s CPU ({sw:.2f} s, {sc:.2f} CPU-s)"
    )
    rw, rc = best["sysdig-read"]
    print(
        f"sysdig -r, reading only    : {n / rw:12,.0f} events/s wall, {n / rc:12,.0f} events/s CPU (evt.num = 0: no rules)"
    )
    print(
        f"portcullis rules test      : {n / pw:12,.0f} events/s wall, {n / pc:12,.0f} events/s CPU ({pw:.2f} s, {pc:.2f} CPU-s)"
    )
    print(f"  of which start-up alone  : {uw:.2f} s wall, {uc:.2f} CPU-s (imports, loading and compiling the rules)")
    stream_w, stream_c = max(pw - uw, 1e-9), max(pc - uc, 1e-9)
    print(f"  streaming, start-up apart: {n / stream_w:12,.0f} events/s wall, {n / stream_c:12,.0f} events/s CPU")
    print(f"ratio portcullis/sysdig (events/s): {sw / pw:.2f}x wall, {sc / pc:.2f}x CPU whole command; "
          f"{sw / stream_w:.2f}x wall, {sc / stream_c:.2f}x CPU streaming")  # fmt: skip
    print(f"ratio portcullis/sysdig reading only: {rw / pw:.2f}x wall, {rc / pc:.2f}x CPU whole command")
    print("(shared machine: other work skews both sides; figures are best of the interleaved rounds)")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
