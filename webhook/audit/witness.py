"""C2SP tlog-witness: the ``add-checkpoint`` server and the client the log pushes with.

The server (``portcullis audit witness``) verifies the log's signature and the consistency
proof from the size it last cosigned, persists atomically, and answers a ``cosignature/v1``
line. The client is used by ``log.AuditLog`` after each checkpoint; failure mode: a witness
that is down or refuses is logged and skipped, appends never wait for witnesses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from webhook.audit import merkle, note, store

log = logging.getLogger("portcullis.audit.witness")
SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_PROOF_LINES = 63
MAX_BODY = 64 * 1024


class RequestError(Exception):
    """An add-checkpoint request is rejected; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AddCheckpoint:
    old: int
    proof: list[bytes]
    checkpoint: bytes


def parse_request(body: bytes) -> AddCheckpoint:
    """tlog-witness §add-checkpoint request body: 'old N', proof lines, blank line, checkpoint."""
    head, sep, checkpoint = body.partition(b"\n\n")
    if not sep:
        raise RequestError(400, "missing blank line before the checkpoint")
    lines = head.split(b"\n")
    first = lines[0].decode("ascii", "replace")
    size = first.removeprefix("old ")
    if not first.startswith("old ") or not size.isdigit() or len(size) > 20 or (size != "0" and size.startswith("0")):
        raise RequestError(400, "first line must be 'old <size>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise RequestError(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for line in lines[1:]:
        try:
            h = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise RequestError(400, "consistency proof line is not base64") from None
        if len(h) != 32:
            raise RequestError(400, "consistency proof hash is not 32 bytes")
        proof.append(h)
    return AddCheckpoint(int(size), proof, checkpoint)


def encode_request(old: int, proof: Sequence[bytes], checkpoint: bytes) -> bytes:
    lines = [f"old {old}\n"] + [base64.b64encode(h).decode() + "\n" for h in proof]
    return "".join(lines).encode() + b"\n" + checkpoint


class Witness:
    """Witness state: trusted log keys by origin, the latest cosigned checkpoint per origin."""

    def __init__(self, signer: note.Signer, log_keys: Sequence[note.Verifier], state_dir: Path) -> None:
        if signer.sig_type != note.SIG_COSIGNATURE_V1:
            raise note.NoteError("the witness key must be a cosignature key (keygen --witness)")
        self.signer = signer
        self.state_dir = state_dir
        self.keys: dict[str, list[note.Verifier]] = {}
        for key in log_keys:  # the log's key name is its origin (tlog-checkpoint §Signatures)
            self.keys.setdefault(key.name, []).append(key)
        self._locks: dict[str, asyncio.Lock] = {}
        state_dir.mkdir(parents=True, exist_ok=True)

    def _state_path(self, origin: str) -> Path:
        return self.state_dir / hashlib.sha256(origin.encode()).hexdigest()

    def latest(self, origin: str) -> note.Checkpoint | None:
        path = self._state_path(origin)
        if not path.exists():
            return None
        return note.parse_checkpoint(note.parse_note(path.read_bytes()).text)

    async def add_checkpoint(self, req: AddCheckpoint) -> str:
        """Check and cosign; returns the cosignature line or raises ``RequestError``."""
        try:
            signed = note.parse_note(req.checkpoint, "checkpoint")
            cp = note.parse_checkpoint(signed.text)
        except note.NoteError as exc:
            raise RequestError(400, str(exc)) from exc
        keys = self.keys.get(cp.origin)
        if keys is None:
            raise RequestError(404, f"unknown log origin {cp.origin!r}")
        try:
            if not note.verified_by(signed, keys):
                raise RequestError(403, "no signature by a trusted log key")
        except note.NoteError as exc:
            raise RequestError(403, str(exc)) from exc
        if req.old > cp.size:
            raise RequestError(400, f"old size {req.old} exceeds checkpoint size {cp.size}")
        lock = self._locks.setdefault(cp.origin, asyncio.Lock())
        async with lock:  # check-then-persist is atomic per origin (tlog-witness §add-checkpoint)
            latest = await asyncio.to_thread(self.latest, cp.origin)
            latest_size = latest.size if latest else 0
            if req.old != latest_size:
                raise RequestError(409, f"{latest_size}\n")
            self._check_consistency(req, cp, latest)
            line = self.signer.sign_line(signed.text)
            stored = signed.encode() + line.encode()
            await asyncio.to_thread(store.write_atomic, self._state_path(cp.origin), stored, True, 0o644)
        return line

    @staticmethod
    def _check_consistency(req: AddCheckpoint, cp: note.Checkpoint, latest: note.Checkpoint | None) -> None:
        if cp.size == 0 and cp.root != merkle.EMPTY_ROOT:
            raise RequestError(422, "a size-0 checkpoint must carry the empty tree's root")
        if req.old == 0:
            if req.proof:
                raise RequestError(422, "the proof from size 0 must be empty")
            return
        assert latest is not None
        try:
            merkle.verify_consistency(req.old, cp.size, latest.root, cp.root, req.proof)
        except merkle.ProofError as exc:
            raise RequestError(422, f"consistency proof: {exc}") from exc


def make_app(wit: Witness) -> web.Application:
    async def add_checkpoint(request: web.Request) -> web.Response:
        body = await request.read()  # client_max_size bounds it (413 beyond)
        try:
            line = await wit.add_checkpoint(parse_request(body))
        except RequestError as exc:
            if exc.status == 409:
                return web.Response(status=409, body=str(exc).encode(), content_type=SIZE_CONTENT_TYPE)
            return web.Response(status=exc.status, text=str(exc) + "\n")
        return web.Response(text=line)

    async def checkpoint(request: web.Request) -> web.Response:
        name = request.match_info["origin_hash"]
        path = wit.state_dir / name
        if len(name) != 64 or not all(c in "0123456789abcdef" for c in name) or not path.exists():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type="text/plain", charset="utf-8")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/add-checkpoint", add_checkpoint)
    app.router.add_get("/{origin_hash}/checkpoint", checkpoint)
    return app


# -- client --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness's submission URL prefix and (optionally) its cosignature vkey to check replies."""

    url: str
    key: note.Verifier | None = None

    @classmethod
    def parse(cls, value: WitnessEndpoint | str) -> WitnessEndpoint:
        """Accepts an endpoint, ``URL`` or ``URL VKEY``."""
        if isinstance(value, WitnessEndpoint):
            return value
        url, _, vkey = value.strip().partition(" ")
        return cls(url.rstrip("/"), note.parse_vkey(vkey.strip()) if vkey.strip() else None)


async def collect_cosignatures(
    endpoints: Sequence[WitnessEndpoint],
    signed: bytes,
    size: int,
    proof: Callable[[int], list[bytes]],
    sizes: dict[str, int],
    timeout: float = 10.0,
) -> list[str]:
    """Ask every witness to cosign; returns the cosignature lines received (and checked)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        results = await asyncio.gather(
            *(_one(session, ep, signed, size, proof, sizes) for ep in endpoints), return_exceptions=True
        )
    lines: list[str] = []
    for ep, res in zip(endpoints, results, strict=True):
        if isinstance(res, BaseException):
            log.warning("witness %s: %s", ep.url, res)
        else:
            lines.extend(res)
    return lines


async def _one(
    session: aiohttp.ClientSession,
    ep: WitnessEndpoint,
    signed: bytes,
    size: int,
    proof: Callable[[int], list[bytes]],
    sizes: dict[str, int],
) -> list[str]:
    old = sizes.get(ep.url, 0)
    for _ in range(3):
        body = encode_request(old, await asyncio.to_thread(proof, old) if old else [], signed)
        async with session.post(ep.url + "/add-checkpoint", data=body) as resp:
            text = await resp.text()
            if resp.status == 409:
                old = int(text.strip())
                if old > size:
                    raise RuntimeError(f"witness has size {old}, larger than ours ({size}): possible fork")
                continue
            if resp.status != 200:
                raise RuntimeError(f"add-checkpoint answered {resp.status}: {text.strip()}")
        sizes[ep.url] = size
        got = [line + "\n" for line in text.split("\n") if line.startswith(note.DASH)]
        if ep.key is None:
            return got
        cosigned = note.parse_note(signed + "".join(got).encode())
        return [line for line in got if _line_verifies(cosigned, line, ep.key)]
    raise RuntimeError("witness kept answering 409 Conflict")


def _line_verifies(signed: note.Note, line: str, key: note.Verifier) -> bool:
    one = note.Note(signed.text, tuple(s for s in signed.signatures if s.line == line))
    try:
        return bool(note.verified_by(one, [key]))
    except note.NoteError:
        return False
