"""``portcullis audit report``: a thin layer over ``report`` and ``report_render``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``report`` under ``portcullis audit``."""
    p = sub.add_parser("report", help="a report for security teams over one or more audit logs")
    p.add_argument("--log", type=Path, action="append", required=True, help="log directory (repeatable)")
    p.add_argument("--pub", action="append", default=[], help="log public key (vkey or file), to verify")
    p.add_argument("--from", dest="start", help="start (date or RFC 3339, inclusive)")
    p.add_argument("--to", dest="end", help="end (date: inclusive day; RFC 3339: exclusive)")
    p.add_argument("--namespace", help="only this namespace")
    p.add_argument(
        "--format", choices=("html", "json", "csv", "md"), default="html", help="report format (default html)"
    )
    p.add_argument("--output", "-o", type=Path, help="write here instead of stdout")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from webhook import output
    from webhook.audit import report, report_render

    window = report.Window(report.parse_time(args.start), report.parse_time(args.end, end=True), args.namespace)
    data = report.build(args.log, window=window, public_keys=args.pub)
    output.write(args.output, report_render.render(data, args.format))  # failure: OutputError, exit 2
    if any(i.verified is False for i in data.integrity):
        print("portcullis: the log does NOT verify; see the integrity section", file=sys.stderr)
        return 1
    return 0
