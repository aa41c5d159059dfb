"""``portcullis replay``: recorded admissions judged again under a candidate config (CLI layer)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from webhook import config as config_mod
from webhook import errors, output


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "replay", help="judge the audit log's admissions again under a candidate config: what would change"
    )
    p.add_argument("--log", type=Path, required=True, help="audit log directory (audit.directory of a replica)")
    p.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="the candidate config (YAML), with its policies"
    )
    p.add_argument("--objects", type=Path, default=None, help="object store (default: <log>.objects beside the log)")
    p.add_argument("--from", dest="start", help="RFC 3339 time or date: records at or after it")
    p.add_argument("--to", dest="end", help="RFC 3339 time or date: records before it")
    p.add_argument("--pub", help="the log's public key (vkey or file): verify the log's tree and signature first")
    p.add_argument(
        "--format",
        choices=["text", "json", "html"],
        default="text",
        help="the diff as text, JSON (a contract for tools) or a self-contained HTML page",
    )
    p.add_argument("--out", type=Path, default=None, help="write the report here instead of stdout")
    p.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> int:
    from webhook.audit import objects, report
    from webhook.replay import render

    if not args.log.is_dir():
        raise errors.InputError(f"--log {args.log}: no such log directory")
    cfg = config_mod.load(args.config)
    start = report.parse_time(args.start)
    end = report.parse_time(args.end, end=True)
    result = asyncio.run(run(cfg, args.log, args.objects or objects.beside(args.log), start, end))
    if args.pub:
        from webhook.audit import note, verify

        checked = verify.verify(args.log, note.load_verifier(args.pub))
        result.log_verified = checked.ok
        result.log_problems = [
            f"leaf {p.position}: {p.message}" if p.position < 1 << 63 else p.message for p in checked.ordered()
        ]
    output.write(args.out, render.render(result, args.format))  # failure: OutputError, exit 2
    return int(result.exit_code)


async def run(cfg: config_mod.Config, log_dir: Path, objects_dir: Path, start: str | None, end: str | None) -> Any:
    """Replay ``log_dir`` under ``cfg``: the candidate's checks as ``portcullis check`` builds them
    (no cluster: what a check would ask the API server is judged from the object alone)."""
    from webhook.checks.pipeline import Pipeline
    from webhook.checks.registry import build_checks
    from webhook.checks.services import Services
    from webhook.replay import diff, source

    labels = diff.RecordedLabels()
    pipeline = Pipeline(cfg, build_checks(cfg, Services(ci=True, admission_semantics=True)), labels)
    await pipeline.start()
    try:
        window = source.Window(start, end)
        result = diff.ReplayReport(str(log_dir), start, end)
        await diff.replay(pipeline, labels, source.read(log_dir, objects_dir, window), result)
        result.outside_window = window.skipped
        return result
    finally:
        await pipeline.close()
