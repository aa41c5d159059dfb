"""``portcullis images export``: save what signature verification reads, for offline checks in CI.

A thin layer over ``signatures.export``; the registry client is built from ``images:`` in the
config (insecure registries, credentials, timeouts), exactly as the images check builds it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from webhook import config as config_mod
from webhook import errors
from webhook.checks import images as images_check
from webhook.ci import manifests
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.signatures import export, reference, trust
from webhook.signatures import registry as reg
from webhook.signatures import source as src


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``images export`` to the ``portcullis`` parser."""
    images = subparsers.add_parser("images", help="image signature material (export for offline checks)")
    commands = images.add_subparsers(dest="images_command", metavar="SUBCOMMAND", required=True)
    p = commands.add_parser(
        "export",
        help="fetch images' digests and signatures from their registry into a directory",
        description="Writes the layout `portcullis check --signatures DIR` reads (docs/images.md). "
        "Exit codes: 0 exported, 2 usage error or a registry failure.",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="manifests (files, directories, '-'): export the images their pods run that a trust "
        "policy pattern matches (every image when the config has no policy)",
    )
    p.add_argument("--image", action="append", default=[], metavar="REF", help="image reference (repeatable)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write (created if absent)")
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="config file: images.insecure_registries, credentials, timeouts"
    )
    p.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST",
        help="allow plain HTTP for this registry (added to images.insecure_registries; repeatable)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole export (default 60)")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="report as text for people or JSON for tools (default text)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.image and not args.paths:
        raise errors.ConfigError("name images with --image REF or give manifests to take them from")
    refs = []
    for text in args.image:
        try:
            refs.append(reference.parse(text))
        except reference.ReferenceError_ as exc:
            raise errors.ConfigError(f"--image: {exc}") from exc
    cfg = config_mod.load(args.config)
    if args.paths:
        refs += [r for r in _from_manifests(args.paths, cfg) if r not in refs]
    if args.insecure_registry:
        hosts = [*cfg.images.insecure_registries, *args.insecure_registry]
        cfg = msgspec.structs.replace(cfg, images=msgspec.structs.replace(cfg.images, insecure_registries=hosts))
    if args.out.exists() and not args.out.is_dir():
        raise errors.ConfigError(f"--out: {args.out} exists and is not a directory")
    results = asyncio.run(_export_all(cfg, refs, args.out, args.timeout))
    failed = [r for r in results if isinstance(r, str)]
    done = [r for r in results if isinstance(r, export.Exported)]
    if args.format == "json":
        doc = {"version": 1, "out": str(args.out), "images": [d.to_json() for d in done], "errors": failed}
        sys.stdout.write(json.dumps(doc, sort_keys=True, indent=2) + "\n")
    else:
        for d in done:
            print(f"{d.image}: {d.digest}: {d.signatures} cosign signature(s), {d.bundles} sigstore bundle(s)")
            for note in d.skipped:
                print(f"  skipped: {note}")
            if not d.signatures and not d.bundles:
                print("  note: no signatures found; an offline check will report this image as unsigned")
    for message in failed:
        print(f"portcullis: error: {message}", file=sys.stderr)
    return 2 if failed else 0


def _from_manifests(paths: list[str], cfg: config_mod.Config) -> list[reference.ImageRef]:
    """The images the manifests' pods run, in order, that a policy pattern matches (all if none)."""
    loaded = manifests.load(paths)
    if loaded.problems:
        raise errors.ManifestError("; ".join(str(p) for p in loaded.problems))
    patterns = [trust.TrustPolicy(p.pattern, ()) for p in cfg.images.policies]
    found: list[reference.ImageRef] = []
    for manifest in loaded.manifests:
        for pod in workloads.pod_specs(manifest.obj):
            for container in workloads.containers(pod):
                image = container.container.get("image")
                try:
                    ref = reference.parse(image) if isinstance(image, str) else None
                except reference.ReferenceError_:
                    ref = None  # `portcullis check` reports it; nothing to export
                if ref is None or ref in found:
                    continue
                if not patterns or any(p.matches(ref) for p in patterns):
                    found.append(ref)
    return found


async def _export_all(
    cfg: config_mod.Config, refs: list[reference.ImageRef], out: Path, timeout: float
) -> list[export.Exported | str]:
    client = images_check.registry_client(cfg)
    deadline = Deadline.after(timeout)
    try:
        return list(await asyncio.gather(*(_one(client, ref, out, deadline) for ref in refs)))
    finally:
        await client.close()


async def _one(client: Any, ref: reference.ImageRef, out: Path, deadline: Deadline) -> export.Exported | str:
    """One image's export, or the message saying why it failed (the others still run)."""
    try:
        return await export.export(client, ref, out, deadline)
    except (errors.UpstreamError, src.Unresolvable, reg.ContentError) as exc:
        return f"{ref}: {exc}"
    except OSError as exc:
        return f"{ref}: cannot write under {out}: {exc.strerror or exc}"
