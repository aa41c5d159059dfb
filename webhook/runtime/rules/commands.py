"""Sub-commands of the runtime face (registered by ``webhook.cli``).

``rules validate`` and ``rules test`` are thin layers over ``runtime.rules`` and
``runtime.engine``: they parse arguments, call the same code the monitor uses, and print.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from webhook import errors

if TYPE_CHECKING:
    from webhook.runtime.rules import coverage

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
    validate.add_argument(
        "rules",
        nargs="+",
        type=Path,
        metavar="RULES",
        help="rules files or directories (*.yaml, sorted), in load order",
    )
    validate.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="report as text for people or JSON for tools (default text)",
    )
    validate.add_argument(
        "--source",
        choices=("ebpf", "jsonl", "tetragon"),
        default="ebpf",
        help="report enabled rules reading fields this event source cannot produce, as `portcullis monitor "
        "--source` does at start-up (default ebpf; jsonl: recorded fields, all producible)",
    )
    validate.add_argument(
        "--pod-metadata", action="store_true", help="the monitor runs with --kubelet (k8s.* and container.image.*)"
    )
    validate.set_defaults(func=_validate)

    test = sub.add_parser(
        "test",
        help="run rules (or one --condition) over events given as JSON lines",
        description="With RULES: print one Falco JSON alert per line. With --condition: print the "
        "evt.num of every matching event (no event-type prefilter). Events without evt.time get "
        "time 0, so output is reproducible.",
    )
    test.add_argument(
        "rules",
        nargs="*",
        type=Path,
        metavar="RULES",
        help="rules files or directories (*.yaml, sorted), in load order",
    )
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
    from webhook.runtime.rules import coverage, fields

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
    have = fields.producible_fields(args.source, pod_metadata=args.pod_metadata)
    report = coverage.assess([r for r in ruleset.rules if r.enabled], have)
    for cov in report:
        if cov.missing:
            print(f"warning: {cov.message(args.source)}", file=sys.stderr)
    dead = len(coverage.dead_rules(report))
    if args.format == "json":
        _print_json(
            {
                "version": 1,
                "ok": True,
                "errors": [],
                "warnings": [_diag(w) for w in ruleset.warnings],
                "rules": len(ruleset.rules),
                "enabled": enabled,
                "source": args.source,
                "fields_not_produced": [_coverage(c) for c in report],
            }
        )
    else:
        print(f"Ok: {len(ruleset.rules)} rules ({enabled} enabled), {len(ruleset.warnings)} warning(s)")
        partial = sum(1 for c in report if c.missing and not c.dead)
        if dead or partial:
            print(
                f"On the {args.source} source: {dead} enabled rule(s) disabled (they cannot fire without fields it "
                f"does not produce), {partial} run without some fields"
            )
    return 0


def _coverage(c: coverage.RuleCoverage) -> dict[str, Any]:
    return {
        "rule": c.rule, "file": c.loc.file, "line": c.loc.line, "disabled": c.dead, "condition_fields": list(c.missing),
        "output_fields": list(c.output_missing),
    }  # fmt: skip


def _diag(d: Any) -> dict[str, Any]:
    return {"file": d.loc.file, "line": d.loc.line, "message": d.message, "text": d.snippet}


def _print_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(doc, option=_JSON_OPTS).decode() + "\n")


def _events(name: str, wanted: Any = None) -> Any:
    """Events from a JSON-lines file; a bad line is an InputError naming file and line. With
    ``wanted`` (``engine.can_match_type``), events of a type no rule matches are not decoded."""
    from webhook.runtime.sources import recorded

    return recorded.Reader(name, wanted)


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
    process = engine.process
    for event in _events(args.events, engine.can_match_type):
        for alert in process(event):
            out.write(orjson.dumps(alert.to_falco_json(host), option=_JSON_OPTS).decode() + "\n")
    return 0
