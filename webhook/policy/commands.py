"""Sub-commands of the policy face: ``portcullis policy test`` and ``portcullis policy validate``.

Thin layer: find files, call ``policy.testing`` / ``policy.rego`` / ``policy.gatekeeper`` (the
code the webhook runs), print, pick the exit code (0 ok, 1 a test failed, 2 bad input).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from webhook import errors
from webhook.core import workloads
from webhook.policy import gatekeeper, inventory, modules, rego, testing

_VERSION = 1


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="report as text for people or JSON for tools (default text)",
    )


def _gatekeeper_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--gatekeeper", action="append", type=Path, default=[], metavar="DIR", help=help_text)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this face's sub-commands to the ``portcullis`` parser."""
    policy = subparsers.add_parser("policy", help="test and validate Rego policies and Gatekeeper templates")
    sub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    test = sub.add_parser("test", help="run Rego test_ rules and gator Suite files; exit 1 on failure")
    test.add_argument("paths", nargs="*", type=Path, metavar="DIR", help="directories or files (default: policies)")
    _format_option(test)
    test.set_defaults(func=cmd_test)
    validate = sub.add_parser("validate", help="compile policies and templates; report problems")
    validate.add_argument("paths", nargs="*", type=Path, metavar="DIR", help="Rego directories (default: policies)")
    _gatekeeper_option(validate, "Gatekeeper ConstraintTemplates and constraints to compile too (repeatable)")
    _format_option(validate)
    validate.set_defaults(func=cmd_validate)
    rules = sub.add_parser("rules", help="the webhook rules (chart values) for the kinds policies select")
    rules.add_argument("paths", nargs="*", type=Path, metavar="DIR", help="Rego directories")
    _gatekeeper_option(rules, "Gatekeeper ConstraintTemplates and constraints whose match selects kinds (repeatable)")
    rules.set_defaults(func=cmd_rules)
    policy.set_defaults(func=lambda _args: _usage(policy))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _paths(args: argparse.Namespace) -> list[Path]:
    paths: list[Path] = args.paths or [Path("policies")]
    for path in paths:
        if not path.exists():
            raise errors.PolicyLoadError(f"{path}: no such file or directory")
    return paths


def cmd_test(args: argparse.Namespace) -> int:
    results = testing.run(_paths(args))
    failed = [r for r in results if not r.passed]
    if args.format == "json":
        doc: dict[str, Any] = {"version": _VERSION, "passed": len(results) - len(failed), "failed": len(failed)}
        doc["tests"] = [r.to_json() for r in sorted(results, key=lambda r: (r.file, r.name))]
        print(json.dumps(doc, sort_keys=True, indent=2))
    else:
        for result in results:
            status = "PASS" if result.passed else "FAIL"
            detail = f": {result.message}" if result.message else ""
            print(f"{status} {result.name} ({result.file}){detail}")
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if not results:
        print("no tests found (test_ rules in *_test.rego, or kind: Suite files)", file=sys.stderr)
    return 1 if failed else 0


def cmd_validate(args: argparse.Namespace) -> int:
    paths = _paths(args)
    rego_files = modules.discover(paths, tests=False)
    found: dict[str, list[str]] = {"policies": [], "constraints": []}
    if rego_files:
        found["policies"] = list(rego.load_directory(paths).policy_ids)
    if args.gatekeeper:
        found["constraints"] = list(gatekeeper.load(args.gatekeeper).policy_ids)
    if args.format == "json":
        print(json.dumps({"version": _VERSION, **found}, sort_keys=True, indent=2))
    else:
        for policy_id in found["policies"]:
            print(f"ok policy {policy_id}")
        for constraint_id in found["constraints"]:
            print(f"ok constraint {constraint_id}")
    return 0


_POD_RESOURCES = frozenset({"Pod", *workloads.WORKLOAD_KINDS})  # already in the chart's own rules


def resource_of(kind: str) -> tuple[str, str]:
    """The resource (plural) and scope of ``kind`` (``*`` when the scope is not known)."""
    scope = "Cluster" if kind in inventory.CLUSTER_SCOPED else "*"
    if kind in ("Ingress", "NetworkPolicy", "Endpoints", "Service", "ConfigMap", "Secret", "Role", "RoleBinding"):
        scope = "Namespaced"
    return inventory.plural(kind), scope


def cmd_rules(args: argparse.Namespace) -> int:
    """Print ``webhook.validating.extraRules`` for the kinds the policies select (chart values)."""
    selected: list[tuple[list[str], list[str]]] = []
    if args.paths:
        for path in args.paths:
            if not path.exists():
                raise errors.PolicyLoadError(f"{path}: no such file or directory")
        policy_kinds = rego.load_directory(args.paths).kinds()
        selected.append((["*"], sorted(policy_kinds)))
    if args.gatekeeper:
        selected += gatekeeper.load(args.gatekeeper).matched_kinds()
    rules: list[dict[str, Any]] = []
    for groups, kinds in selected:
        if "*" in kinds:
            print("# a policy selects every kind: list the resources it needs by hand", file=sys.stderr)
            continue
        by_scope: dict[str, list[str]] = {}
        for kind in kinds:
            if kind in _POD_RESOURCES:
                continue
            resource, scope = resource_of(kind)
            by_scope.setdefault(scope, []).append(resource)
        for scope, resources in sorted(by_scope.items()):
            rules.append({"apiGroups": groups, "resources": sorted(set(resources)), "scope": scope})
    print(yaml.safe_dump({"webhook": {"validating": {"extraRules": rules}}}, sort_keys=False), end="")
    return 0
