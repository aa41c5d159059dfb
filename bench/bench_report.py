"""``portcullis audit report`` over a large log, next to just reading and decoding its records.

python bench/bench_report.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

from webhook.audit import log as audit_log
from webhook.audit import report, report_render


def content(i: int, rng: random.Random) -> tuple[str, dict]:
    ns = f"team-{i % 40}"
    if i % 5 == 4:
        return "alert", {
            "rule": f"rule-{i % 9}",
            "priority": "Warning",
            "hostname": f"node-{i % 20}",
            "output": "x",
            "output_fields": {
                "k8s.ns.name": ns,
                "k8s.pod.name": f"p-{i % 300}",
                "container.image.repository": f"reg.example.com/{ns}/app",
            },
        }
    result = rng.choice(("allowed", "allowed", "warned", "denied"))
    return "admission", {
        "namespace": ns,
        "kind": "Deployment",
        "name": f"app-{i % 500}",
        "user": f"user-{i % 30}",
        "result": result,
        "allowed": result != "denied",
        "dry_run": False,
        "images": [f"reg.example.com/{ns}/app:1"],
        "findings": [{"check": "pss:privileged", "mode": "enforce" if result == "denied" else "warn"}],
        "context": {
            "images": {
                "images": [
                    {
                        "image": f"reg.example.com/{ns}/app:1",
                        "verified": i % 3 != 0,
                        "digest": "sha256:" + "0" * 64,
                        "reason": "no signature",
                    }
                ]
            }
        },
    }


async def write(directory: Path, n: int) -> None:
    rng = random.Random(1)
    log = await audit_log.AuditLog.open(
        directory,
        signing_key_path=None,
        origin="bench/report",
        writer="bench",
        commit_window=0.05,
        durable=False,
        checkpoint_every=1 << 40,
    )
    batch = []
    for i in range(n):
        kind, c = content(i, rng)
        batch.append(log.append(kind, c))  # type: ignore[arg-type]
        if len(batch) == 20_000:
            await asyncio.gather(*batch)
            batch.clear()
    await asyncio.gather(*batch)
    await log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="portcullis-bench-report-")) / "log"
    t0 = time.perf_counter()
    asyncio.run(write(directory, args.records))
    print(f"wrote {args.records} records in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    count = sum(1 for _ in audit_log.read_records(directory))
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = report.build([directory], window=report.Window(None, None, None), verify_logs=False)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    html = report_render.render(data, "html")
    render_s = time.perf_counter() - t0
    print(f"read + decode only   : {read_s:6.2f} s ({count / read_s:9.0f} records/s)")
    print(f"report aggregation   : {build_s:6.2f} s ({count / build_s:9.0f} records/s), ratio {build_s / read_s:.2f}x")
    print(f"HTML rendering       : {render_s:6.2f} s ({len(html) // 1024} KiB)")
    print(f"report total         : {build_s + render_s:6.2f} s for {count} records")


if __name__ == "__main__":
    sys.exit(main())
