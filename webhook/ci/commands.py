"""``portcullis check``: the webhook's checks over manifests in CI (a thin layer over ci.check)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from webhook import config as config_mod
from webhook import errors, output
from webhook.checks.pipeline import Pipeline
from webhook.checks.registry import build_checks
from webhook.checks.services import Services
from webhook.ci import check, formats, manifests
from webhook.core import shown
from webhook.core.decision import Mode


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``check`` to the ``portcullis`` parser."""
    p = subparsers.add_parser(
        "check",
        help="evaluate the webhook's checks over manifests (files, directories, '-' for stdin)",
        description="Exit codes: 0 no enforce-mode violation, 1 violations, 2 usage or input error, or an "
        "image not judged (its registry failed) without --allow-unverified, a custom policy that failed to "
        "evaluate, or the report could not be written.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="file, directory (recursive) or '-' for stdin")
    p.add_argument("--config", type=Path, metavar="FILE", help="the webhook's config file (same keys)")
    p.add_argument(
        "--level",
        choices=("privileged", "baseline", "restricted", "hardened"),
        help="Pod Security level to enforce for every object (overrides config and labels)",
    )
    p.add_argument("--pss-version", metavar="VERSION", help="Pod Security version: v1.N or latest (default latest)")
    p.add_argument(
        "--format",
        choices=formats.FORMATS,
        default="text",
        help="report format (default text; sarif for code scanning)",
    )
    p.add_argument("--output", "-o", type=Path, metavar="FILE", help="write the report here instead of stdout")
    p.add_argument(
        "--namespace", metavar="NAME", help="namespace for objects without one (default from config: default)"
    )
    p.add_argument(
        "--namespace-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="label to assume on every namespace (repeatable)",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="CHECK",
        help="do not run this check (repeatable or comma-separated), e.g. --skip images",
    )
    p.add_argument(
        "--fail-on",
        choices=("enforce", "warn"),
        default="enforce",
        help="exit 1 on enforce violations only (default) or on warnings too",
    )
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="images a check could not judge (registry unreachable) are reported but do not make "
        "the exit code 2 (JUnit <skipped>, PolicyReport skip, SARIF warning)",
    )
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the text report (default auto: on a terminal, unless NO_COLOR is set)",
    )
    p.add_argument(
        "--signatures",
        type=Path,
        metavar="DIR",
        help="verify image signatures offline from DIR, written by `portcullis images export` "
        "(sets images.offline_bundles; no registry is contacted)",
    )
    p.set_defaults(func=_run)


class _AssumedLabels:
    """Namespace labels for CI: the ones given on the command line, over the config's."""

    def __init__(self, cfg: config_mod.Config, assumed: Mapping[str, str]) -> None:
        self._cfg, self._assumed = cfg, dict(assumed)

    def labels(self, namespace: str) -> Mapping[str, str] | None:
        settings = self._cfg.namespaces.get(namespace)
        base = dict(settings.labels) if settings is not None else {}
        return {**base, **self._assumed}


def build_config(args: argparse.Namespace) -> config_mod.Config:
    cfg = config_mod.load(args.config)
    if args.level or args.pss_version:
        privilege = cfg.privilege
        changes: dict[str, Any] = {"pinned": True}
        if args.level:
            changes |= {"level": args.level, "warn_level": args.level, "audit_level": args.level}
        if args.pss_version:
            changes |= {
                "version": args.pss_version,
                "warn_version": args.pss_version,
                "audit_version": args.pss_version,
            }
        try:
            privilege = msgspec.convert(
                msgspec.to_builtins(msgspec.structs.replace(privilege, **changes)), type(privilege)
            )
        except (msgspec.ValidationError, ValueError) as exc:
            raise errors.ConfigError(f"--level/--pss-version: {exc}") from exc
        cfg = msgspec.structs.replace(cfg, privilege=privilege)
    if getattr(args, "signatures", None) is not None:  # relative to the working directory, like the manifests
        images = msgspec.structs.replace(cfg.images, offline_bundles=str(args.signatures.absolute()))
        cfg = msgspec.structs.replace(cfg, images=images)
    return cfg


def _labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.ConfigError(f"--namespace-label {pair!r} must be KEY=VALUE")
        out[key] = value
    return out


def _skipped(values: list[str]) -> frozenset[str]:
    skipped = {s.strip() for v in values for s in v.split(",") if s.strip()}
    unknown = skipped - set(config_mod.CHECK_IDS)
    if unknown:
        raise errors.ConfigError(
            f"--skip: unknown check {sorted(unknown)[0]!r} (known: {', '.join(config_mod.CHECK_IDS)})"
        )
    return frozenset(skipped)


def _run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    skip = _skipped(args.skip)
    pipeline = Pipeline(
        cfg, build_checks(cfg, Services(ci=True), skip=skip), _AssumedLabels(cfg, _labels(args.namespace_label))
    )
    if args.output is not None and not args.output.parent.is_dir():  # before the work, not after it
        raise errors.InputError(f"--output {args.output}: directory {args.output.parent} does not exist")
    loaded = manifests.load(args.paths)
    if not loaded.manifests and all(p.message == manifests.NOTHING_FOUND for p in loaded.problems):
        named = ", ".join("stdin" if p == "-" else p for p in args.paths)
        raise errors.ManifestError(f"{manifests.NOTHING_FOUND} in {named}")
    report = asyncio.run(_check(loaded, pipeline, cfg, args.namespace or cfg.default_namespace, sorted(skip)))
    report.allow_unverified = args.allow_unverified
    color = args.color == "always" or (
        args.color == "auto" and args.output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    )
    rendered = formats.render(report, args.format, color=color, base_dir=os.getcwd())
    output.write(args.output, rendered)  # a report that cannot be written: OutputError, exit 2
    if args.format != "text":
        for problem in report.problems:
            print(f"portcullis: error: {shown.terminal(str(problem))}", file=sys.stderr)
    if report.problems:
        return 2
    if report.policy_errors:
        # A policy that errored judged nothing, whatever failure mode admission would apply.
        for policy_id, where in sorted(report.policy_errors.items()):
            print(
                f"portcullis: error: policy {shown.terminal(policy_id)} failed to evaluate "
                f"(first at {shown.terminal(where)}; its error is in the report)",
                file=sys.stderr,
            )
        return 2
    if report.not_judged and not args.allow_unverified:
        # Not judged is not passed: the run could not do what it was asked (CLI convention: 2).
        print(
            f"portcullis: error: {len(report.not_judged)} image(s) not judged (registry errors); "
            "verify offline with --signatures DIR, or accept with --allow-unverified",
            file=sys.stderr,
        )
        return 2
    failing = {Mode.ENFORCE} if args.fail_on == "enforce" else {Mode.ENFORCE, Mode.WARN}
    if any(f.mode in failing for r in report.results for f in r.findings):
        return 1
    return 0


async def _check(
    loaded: manifests.Loaded, pipeline: Pipeline, cfg: config_mod.Config, namespace: str, skipped: list[str]
) -> check.Report:
    await pipeline.start()
    try:
        return await check.check(loaded, pipeline, default_namespace=namespace, skipped_checks=skipped)
    finally:
        await pipeline.close()
