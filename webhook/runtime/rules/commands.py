"""Sub-commands of the runtime face (registered by ``webhook.cli``).

``rules validate`` and ``rules test`` are thin layers over ``runtime.rules`` and
``runtime.engine``: they parse arguments, call the same code the monitor uses, and print.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from webhook import errors

_JSON_OPTS = orjson.OPT_SORT_KEYS


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this face's sub-commands to the ``portcullis`` parser."""
    _register_rules(subparsers)


# -- portcullis rules ----------------------------------------------------------------------


def _register_rules(subparsers: argparse._SubParsersAction[Any]) -> None:
    rules = subparsers.add_parser("rules", help="validate and test Falco rules files")
    sub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    rules.set_defaults(func=lambda args: _usage(rules))

    validate = sub.add_parser("validate", help="load rules files like `falco -V`: errors and warnings")
    validate.add_argument("rules", nargs="+", type=Path, metavar="RULES", help="rules files, in load order")
    validate.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="report as text for people or JSON for tools (default text)",
    )
    validate.set_defaults(func=_validate)

    test = sub.add_parser(
        "test",
        help="run rules (or one --condition) over events given as JSON lines",
        description="With RULES: print one Falco JSON alert per line. With --condition: print the "
        "evt.num of every matching event (no event-type prefilter). Events without evt.time get "
        "time 0, so output is reproducible.",
    )
    test.add_argument("rules", nargs="*", type=Path, metavar="RULES", help="rules files, in load order")
    test.add_argument("--events", required=True, metavar="EVENTS.jsonl", help="events file ('-': stdin)")
    test.add_argument("--match", choices=("first", "all"), default="all", help="Falco's rule_matching")
    test.add_argument("--condition", metavar="TEXT", help="test this condition instead of the rules")
    test.add_argument(
        "--rules",
        dest="macro_rules",
        nargs="+",
        type=Path,
        default=[],
        metavar="RULES",
        help="with --condition: files providing macros and lists",
    )
    test.add_argument("--hostname", default=None, help="hostname in alerts (default: this host)")
    test.set_defaults(func=_test)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _validate(args: argparse.Namespace) -> int:
    from webhook.runtime import rules

    try:
        ruleset = rules.load(args.rules)
    except rules.RulesError as exc:
        for w in exc.warnings:
            print(f"warning: {w}", file=sys.stderr)
        for e in exc.errors:
            print(f"error: {e.detail()}", file=sys.stderr)
        if args.format == "json":
            _print_json(
                {
                    "version": 1,
                    "ok": False,
                    "errors": [_diag(e) for e in exc.errors],
                    "warnings": [_diag(w) for w in exc.warnings],
                }
            )
        else:
            print(f"{len(exc.errors)} error(s), {len(exc.warnings)} warning(s)")
        return 1
    for w in ruleset.warnings:
        print(f"warning: {w}", file=sys.stderr)
    enabled = sum(r.enabled for r in ruleset.rules)
    if args.format == "json":
        _print_json(
            {
                "version": 1,
                "ok": True,
                "errors": [],
                "warnings": [_diag(w) for w in ruleset.warnings],
                "rules": len(ruleset.rules),
                "enabled": enabled,
            }
        )
    else:
        print(f"Ok: {len(ruleset.rules)} rules ({enabled} enabled), {len(ruleset.warnings)} warning(s)")
    return 0


def _diag(d: Any) -> dict[str, Any]:
    return {"file": d.loc.file, "line": d.loc.line, "message": d.message, "text": d.snippet}


def _print_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(doc, option=_JSON_OPTS).decode() + "\n")


def _events(name: str) -> Iterator[dict[str, Any]]:
    """Events from a JSON-lines file; a bad line is an InputError naming file and line."""
    stream = sys.stdin.buffer if name == "-" else None
    try:
        handle = stream if stream is not None else open(name, "rb")  # noqa: SIM115
    except OSError as exc:
        raise errors.InputError(f"{name}: cannot read events: {exc.strerror}") from exc
    with handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise errors.InputError(f"{name}:{lineno}: invalid JSON: {exc}") from exc
            if not isinstance(event, dict):
                raise errors.InputError(f"{name}:{lineno}: an event must be a JSON object")
            yield event


def _test(args: argparse.Namespace) -> int:
    from webhook.runtime import rules
    from webhook.runtime.engine import Engine

    out = sys.stdout
    if args.condition is not None:
        match = rules.condition(args.condition, [*args.rules, *args.macro_rules])
        for event in _events(args.events):
            if match(event):
                out.write(f"{event.get('evt.num', '<NA>')}\n")
        return 0
    if not args.rules:
        raise errors.InputError("rules test: give RULES files, or --condition TEXT")
    engine = Engine.load(args.rules, match=args.match, clock=lambda: 0)
    for w in engine.warnings:
        print(f"warning: {w}", file=sys.stderr)
    host = args.hostname or socket.gethostname()
    for event in _events(args.events):
        for alert in engine.process(event):
            out.write(orjson.dumps(alert.to_falco_json(host), option=_JSON_OPTS).decode() + "\n")
    return 0
