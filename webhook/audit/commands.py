"""Sub-commands of the audit face (registered by ``webhook.cli``): ``portcullis audit ...``.

A thin layer: parse flags, call ``log`` / ``verify`` / ``proofs`` / ``witness``, print, pick the
exit code (0 ok, 1 tampering found, 2 usage or input error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import orjson

from webhook import errors, listening
from webhook.audit import freshness, log, note, proofs, record_workers, records, report_commands, verify, witness


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this face's sub-commands to the ``portcullis`` parser."""
    audit = subparsers.add_parser("audit", help="the C2SP tile audit log: append, verify, prove, witness")
    sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    report_commands.register(sub)  # `audit report` lives in its own module (report_commands.py)

    p = sub.add_parser("keygen", help="create an Ed25519 log key (audit.key / audit.pub)")
    p.add_argument("--out", type=Path, required=True, help="directory for the key files")
    p.add_argument("--name", default=None, help="key name (= log origin), default portcullis/<host>")
    p.add_argument("--witness", action="store_true", help="a witness cosigning key (witness.key/.pub)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("append", help="append JSON lines from stdin as records")
    p.add_argument("--log", type=Path, required=True, help="the audit log's directory")
    p.add_argument("--key", type=Path, required=True, help="the log's private key (audit.key)")
    p.add_argument("--origin", default=None, help="checkpoint origin (default: the key name)")
    p.add_argument("--writer", default=socket.gethostname(), help="writer identity stored in records")
    p.add_argument("--kind", default="config", choices=sorted(records.KINDS), help="kind for plain objects")
    p.add_argument(
        "--witness-url", action="append", default=[], help="'URL [VKEY]' of a witness, or 'dir:PATH' to publish"
    )
    _format(p)
    p.set_defaults(func=cmd_append)

    p = sub.add_parser("verify", help="recompute and check every file of one or more logs")
    p.add_argument("--log", type=Path, action="append", required=True, help="log directory (repeatable)")
    p.add_argument("--pub", action="append", required=True, help="log vkey or file (repeatable)")
    p.add_argument("--witness-key", action="append", default=[], help="witness vkey or file (repeatable)")
    p.add_argument("--witnesses-required", type=int, default=0, help="k of n (default: all given)")
    p.add_argument("--no-record-check", action="store_true", help="skip the canonical-JSON check")
    p.add_argument(
        "--jobs",
        type=_jobs,
        default=None,
        metavar="N",
        help="processes checking records beside the tree check (default: the usable CPUs; 1: all in one process)",
    )
    p.add_argument("--published", type=Path, action="append", default=[], help="publish dir (repeatable)")
    p.add_argument(
        "--trusted-checkpoint",
        type=Path,
        action="append",
        default=[],
        help="a signed checkpoint kept outside the log (a witness's latest, a saved copy); repeatable",
    )
    p.add_argument("--min-size", type=_size, default=None, help="a tree size the log is known to have reached")
    p.add_argument(
        "--require-fresh",
        action="store_true",
        help="fail unless a witness, published or trusted checkpoint, or --min-size anchors the log's size",
    )
    _format(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("prove", help="inclusion proof of one record against the latest checkpoint")
    p.add_argument("--log", type=Path, required=True, help="the audit log's directory")
    p.add_argument("--index", type=int, required=True, help="the record's index (0-based)")
    p.add_argument(
        "--format", choices=["json", "tlog-proof"], default="json", help="JSON or a C2SP tlog-proof file (default json)"
    )
    p.add_argument("--out", type=Path, default=None, help="write the proof here instead of stdout")
    p.set_defaults(func=cmd_prove)

    p = sub.add_parser("verify-proof", help="check a tlog-proof file offline with the public key")
    p.add_argument("--proof", type=Path, required=True, help="the tlog-proof file (audit prove --format tlog-proof)")
    p.add_argument("--pub", required=True, help="the log's vkey or a file holding it")
    p.add_argument("--record", type=Path, default=None, help="the record bytes (default: the extra line)")
    p.add_argument("--witness-key", action="append", default=[], help="witness vkey or file (repeatable)")
    p.add_argument("--witnesses-required", type=int, default=0, help="k of n (default: all given)")
    p.set_defaults(func=cmd_verify_proof)

    p = sub.add_parser("consistency", help="consistency proof between two tree sizes")
    p.add_argument("--log", type=Path, required=True, help="the audit log's directory")
    p.add_argument("--old", type=int, required=True, help="the older tree size")
    p.add_argument("--new", type=int, default=None, help="default: the latest checkpoint's size")
    p.set_defaults(func=cmd_consistency)

    p = sub.add_parser("witness", help="serve the C2SP tlog-witness add-checkpoint API")
    p.add_argument("--key", type=Path, required=True, help="witness private key (keygen --witness)")
    p.add_argument("--log-key", action="append", required=True, help="trusted log vkey (repeatable)")
    p.add_argument("--state", type=Path, required=True, help="directory for the latest checkpoints")
    p.add_argument("--listen", default="127.0.0.1:8455", help="HOST:PORT")
    p.set_defaults(func=cmd_witness)

    for name, helptext in (("tail", "the last records"), ("show", "records by index or filter")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--log", type=Path, action="append", required=True, help="log directory (repeatable)")
        p.add_argument("--index", type=int, action="append", default=[], help="a record's index (repeatable)")
        p.add_argument(
            "-n",
            "--lines",
            type=int,
            default=10 if name == "tail" else 0,
            help="only the last N records (0: all)",
            metavar="N",
        )
        p.add_argument("--kind", choices=sorted(records.KINDS), help="only records of this kind")
        p.add_argument("--writer", help="only records from this writer (replica or node)")
        p.add_argument("--since", help="RFC 3339 time; records at or after it")
        p.add_argument("--grep", help="substring of the record's JSON")
        p.set_defaults(func=cmd_show)


def _size(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a tree size (a non-negative integer)")
    return int(text)


def _jobs(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes (a positive integer)")
    return int(text)


def _format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="report as text for people or JSON for tools (default text)",
    )


def _json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, indent=2) + "\n")


def cmd_keygen(args: argparse.Namespace) -> int:
    stem = "witness" if args.witness else "audit"
    name = args.name or f"portcullis/{socket.gethostname()}{'-witness' if args.witness else ''}"
    signer = note.generate(name, note.SIG_COSIGNATURE_V1 if args.witness else note.SIG_ED25519)
    args.out.mkdir(parents=True, exist_ok=True)
    key, pub = args.out / f"{stem}.key", args.out / f"{stem}.pub"
    for path in (key, pub):
        if path.exists():
            raise errors.InputError(f"{path} already exists (remove it or choose another --out)")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(signer.private_text() + "\n")
    pub.write_text(signer.verifier.vkey() + "\n")
    print(signer.verifier.vkey())
    return 0


def _read_jsonl(stream: Any, kind: str) -> list[tuple[str, dict[str, Any]]]:
    out, bad = [], []
    for n, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            bad.append(f"<stdin>:{n}: not JSON ({exc})")
            continue
        if not isinstance(obj, dict):
            bad.append(f"<stdin>:{n}: expected a JSON object")
        elif set(obj) <= {"kind", "content"} and isinstance(obj.get("content"), dict):
            out.append((obj.get("kind", kind), obj["content"]))
        else:
            out.append((kind, obj))
    if bad:  # nothing is appended unless every line is good
        raise records.RecordError("\n".join(bad[:20]) + ("\n..." if len(bad) > 20 else ""))
    return out


def cmd_append(args: argparse.Namespace) -> int:
    items = _read_jsonl(sys.stdin, args.kind)
    signer = note.load_signer(args.key)

    async def run() -> tuple[int, bytes]:
        alog = await log.AuditLog.open(
            args.log,
            signing_key_path=args.key,
            origin=args.origin or signer.name,
            writer=args.writer,
            commit_window=0,
            checkpoint_every=1 << 62,
            checkpoint_interval=1e9,
            witnesses=args.witness_url,
        )
        try:
            await asyncio.gather(*(alog.append(kind, content) for kind, content in items))  # type: ignore[arg-type]
        finally:
            await alog.close()
        return alog.size, alog.root

    size, root = asyncio.run(run())
    if args.format == "json":
        _json({"version": 1, "tree_size": size, "root_hash": root.hex(), "appended": len(items)})
    else:
        print(f"tree_size {size} root_hash {root.hex()} (appended {len(items)})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    keys = [note.load_verifier(p) for p in args.pub]
    wkeys = _witness_keys(args.witness_key)
    results = []
    anchors = freshness.Anchors(trusted=args.trusted_checkpoint, min_size=args.min_size, require=args.require_fresh)
    for path in args.trusted_checkpoint:
        if not path.is_file():
            raise errors.InputError(f"--trusted-checkpoint {path}: not a file")
    for directory in args.log:
        if not directory.is_dir():
            raise errors.InputError(f"--log {directory}: not a directory")
        key = verify.key_for(directory, keys)
        check = not args.no_record_check
        jobs = args.jobs or record_workers.usable_cpus()
        result = verify.verify(directory, key, wkeys, args.witnesses_required, check, args.published, anchors, jobs)
        results.append(result)
    if args.format == "json":
        _json({"version": 1, "logs": [_result_json(r) for r in results]})
    else:
        for r in results:
            _print_result(r)
    return 0 if all(r.ok for r in results) else 1


def _witness_keys(values: list[str]) -> list[note.Verifier]:
    keys = [note.load_verifier(v) for v in values]
    for key in keys:
        if key.sig_type != note.SIG_COSIGNATURE_V1:
            raise errors.InputError(f"--witness-key {key.name}: not a cosignature key (keygen --witness)")
    return keys


def _result_json(r: verify.Result) -> dict[str, Any]:
    first = r.first()
    return {
        "log": str(r.directory),
        "ok": r.ok,
        "origin": r.origin,
        "tree_size": r.size,
        "root_hash": r.root.hex(),
        "checkpoint_size": r.checkpoint_size,
        "checkpoints_checked": r.checkpoints_checked,
        "cosigners": r.cosigners,
        "fresh": r.anchored,
        "anchors": [{"size": a.size, "by": a.how} for a in r.anchors],
        "first_problem": first.message if first else None,
        "problems": [p.message for p in r.ordered()],
        "warnings": r.warnings,
    }


def _print_result(r: verify.Result) -> None:
    for w in r.warnings:
        print(f"{r.directory}: warning: {w}", file=sys.stderr)
    if r.ok:
        print(
            f"{r.directory}: OK origin={r.origin} size={r.size} root={r.root.hex()} "
            f"checkpoints={r.checkpoints_checked} cosigners={len(r.cosigners)}"
        )
        print(f"{r.directory}: {_freshness_text(r)}")
        return
    first = r.first()
    assert first is not None
    print(f"{r.directory}: TAMPERED: first bad place: {first.message}")
    for p in r.ordered()[1:50]:
        print(f"  also: {p.message}")


def _freshness_text(r: verify.Result) -> str:
    if not r.anchors:
        return freshness.UNANCHORED
    best = max(r.anchors, key=lambda a: a.size)
    return f"freshness anchored at size >= {best.size} by " + "; ".join(a.how for a in r.anchors)


def cmd_prove(args: argparse.Namespace) -> int:
    proof = proofs.inclusion(args.log, args.index)
    text = proofs.tlog_proof_text(proof) if args.format == "tlog-proof" else None
    out = json.dumps(proof.as_json(), sort_keys=True, indent=2) + "\n" if text is None else text
    if args.out:
        args.out.write_text(out)
    else:
        sys.stdout.write(out)
    return 0


def cmd_verify_proof(args: argparse.Namespace) -> int:
    key = note.load_verifier(args.pub)
    wkeys = _witness_keys(args.witness_key)
    try:
        record = args.record.read_bytes() if args.record else None
        data = args.proof.read_bytes()
    except OSError as exc:
        raise errors.InputError(f"{exc.filename}: {exc.strerror}") from exc
    problem = proofs.verify_tlog_proof(data, record, key, wkeys, args.witnesses_required)
    if problem:
        print(f"{args.proof}: INVALID: {problem}")
        return 1
    print(f"{args.proof}: OK")
    return 0


def cmd_consistency(args: argparse.Namespace) -> int:
    _json(proofs.consistency(args.log, args.old, args.new))
    return 0


def cmd_witness(args: argparse.Namespace) -> int:
    from aiohttp import web

    signer = note.load_signer(args.key)
    wit = witness.Witness(signer, [note.load_verifier(k) for k in args.log_key], args.state)
    host, _, port = args.listen.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        raise errors.InputError(f"--listen {args.listen!r}: expected HOST:PORT")
    try:  # web.run_app would report a port in use as an internal error
        bare = host.strip("[]")
        probe = socket.create_server((bare, int(port)), family=socket.AF_INET6 if ":" in bare else socket.AF_INET)
    except OSError as exc:
        raise listening.bind_error(exc, host, int(port), "--listen") from exc
    print(f"witness {signer.verifier.vkey()} on http://{args.listen}", file=sys.stderr)
    web.run_app(witness.make_app(wit), sock=probe, print=None)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    wanted = set(args.index)
    picked: list[dict[str, Any]] = []
    for directory in args.log:
        for index, rec in log.read_records(directory):
            if wanted and index not in wanted:
                continue
            if args.kind and rec.get("kind") != args.kind:
                continue
            if args.writer and rec.get("writer") != args.writer:
                continue
            if args.since and str(rec.get("time", "")) < args.since:
                continue
            if args.grep and args.grep not in orjson.dumps(rec).decode():
                continue
            picked.append({"log": str(directory), "index": index, "record": rec})
            if args.lines and len(picked) > 4 * args.lines:
                picked = picked[-args.lines :]
    if args.lines:
        picked = picked[-args.lines :]
    for item in picked:
        sys.stdout.write(orjson.dumps(item, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    return 0
