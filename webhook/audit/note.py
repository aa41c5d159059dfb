"""C2SP signed notes: checkpoints, Ed25519 signatures and key IDs, cosignature/v1, vkeys.

Called by the writer (signs checkpoints), the witness (cosigns them) and ``verify``.
Key files: the private key is ``PRIVATE+KEY+<name>+<hex id>+<base64(type ‖ seed)>`` (the Go
``golang.org/x/mod/sumdb/note`` form), the public key is the vkey
``<name>+<hex id>+<base64(type ‖ pubkey)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from webhook import errors

SIG_ED25519 = 0x01
SIG_COSIGNATURE_V1 = 0x04
DASH = "\u2014"
MAX_SIGNATURES = 64
# The largest signed note read from a file: a checkpoint (origin, size, root, a few extension
# lines) and its signature lines take well under a kilobyte each.
MAX_NOTE_BYTES = 1 << 20


class NoteError(errors.AuditFormatError):
    """A note, checkpoint or key is malformed or does not verify."""


def key_id(name: str, sig_type: int, public: bytes) -> int:
    """SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4], big-endian (signed-note §Signatures)."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public).digest()
    return int.from_bytes(digest[:4], "big")


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Verifier:
    """A public key that checks one (name, key ID) pair of signature lines."""

    name: str
    sig_type: int
    public: bytes
    id: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", key_id(self.name, self.sig_type, self.public))

    def vkey(self) -> str:
        blob = base64.b64encode(bytes([self.sig_type]) + self.public).decode()
        return f"{self.name}+{self.id:08x}+{blob}"

    def verify(self, text: bytes, sig: bytes) -> int | None:
        """True signature check; returns the cosignature timestamp (0 for plain Ed25519)."""
        key = Ed25519PublicKey.from_public_bytes(self.public)
        if self.sig_type == SIG_COSIGNATURE_V1:
            if len(sig) != 72:
                return None
            ts = int.from_bytes(sig[:8], "big")
            msg = cosignature_message(text, ts)
            sig = sig[8:]
        else:
            ts, msg = 0, text
        try:
            key.verify(sig, msg)
        except InvalidSignature:
            return None
        return ts


@dataclass(frozen=True)
class Signer:
    """A private Ed25519 key with its name; ``sig_type`` 0x01 signs notes, 0x04 cosigns."""

    name: str
    sig_type: int
    private: Ed25519PrivateKey

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.sig_type, _raw_public(self.private.public_key()))

    def sign_line(self, text: bytes, timestamp: int | None = None) -> str:
        """One signature line (with newline) over a note text."""
        if self.sig_type == SIG_COSIGNATURE_V1:
            ts = int(time.time()) if timestamp is None else timestamp
            sig = ts.to_bytes(8, "big") + self.private.sign(cosignature_message(text, ts))
        else:
            sig = self.private.sign(text)
        blob = base64.b64encode(self.verifier.id.to_bytes(4, "big") + sig).decode()
        return f"{DASH} {self.name} {blob}\n"

    def private_text(self) -> str:
        seed = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        blob = base64.b64encode(bytes([self.sig_type]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.id:08x}+{blob}"


def generate(name: str, sig_type: int = SIG_ED25519) -> Signer:
    _check_name(name)
    return Signer(name, sig_type, Ed25519PrivateKey.generate())


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    """tlog-cosignature §Ed25519 signed message: header, time line, then the note text."""
    return b"cosignature/v1\ntime %d\n" % timestamp + text


def _decode_key_parts(text: str, what: str, private: bool = False) -> tuple[str, int, bytes]:
    parts = text.strip().split("+", 2)  # base64 may itself contain "+"
    if len(parts) != 3:
        raise NoteError(f"{what}: expected <name>+<hex key id>+<base64 key>, got {len(parts)} parts")
    name, hex_id, blob = parts
    _check_name(name)
    try:
        kid = int(hex_id, 16)
        raw = base64.b64decode(blob, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise NoteError(f"{what}: bad key id or base64 ({exc})") from exc
    if len(hex_id) != 8 or len(raw) != 33 or raw[0] not in (SIG_ED25519, SIG_COSIGNATURE_V1):
        raise NoteError(f"{what}: not an Ed25519 (type 0x01) or cosignature (0x04) key")
    public = raw[1:]
    if private:
        public = _raw_public(Ed25519PrivateKey.from_private_bytes(raw[1:]).public_key())
    if key_id(name, raw[0], public) != kid:
        raise NoteError(f"{what}: key id {hex_id} does not match the key")
    return name, kid, raw


def parse_vkey(text: str, what: str = "verifier key") -> Verifier:
    name, _, raw = _decode_key_parts(text, what)
    return Verifier(name, raw[0], raw[1:])


def parse_private(text: str, what: str = "private key") -> Signer:
    text = text.strip()
    if not text.startswith("PRIVATE+KEY+"):
        raise NoteError(f"{what}: expected a 'PRIVATE+KEY+...' line")
    name, _, raw = _decode_key_parts(text.removeprefix("PRIVATE+KEY+"), what, private=True)
    return Signer(name, raw[0], Ed25519PrivateKey.from_private_bytes(raw[1:]))


def load_signer(path: Path) -> Signer:
    try:
        return parse_private(path.read_text(), str(path))
    except OSError as exc:
        raise NoteError(f"{path}: cannot read private key ({exc.strerror})") from exc


def load_verifier(value: str | Path) -> Verifier:
    """A vkey given inline or as a file path."""
    p = Path(value)
    if "+" not in str(value) or p.exists():
        try:
            return parse_vkey(p.read_text(), str(p))
        except OSError as exc:
            raise NoteError(f"{p}: cannot read public key ({exc.strerror})") from exc
    return parse_vkey(str(value))


@dataclass(frozen=True)
class SignatureLine:
    name: str
    id: int
    sig: bytes
    line: str


@dataclass(frozen=True)
class Note:
    text: bytes
    signatures: tuple[SignatureLine, ...]

    def encode(self) -> bytes:
        return self.text + b"\n" + "".join(s.line for s in self.signatures).encode()


def read_note(path: Path, what: str) -> bytes:
    """A signed note file's bytes, refusing (``NoteError``) anything but a regular file of at
    most ``MAX_NOTE_BYTES`` before reading it (``OSError`` if it cannot be opened)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not wait
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NoteError(f"{what}: not a regular file")
        if st.st_size > MAX_NOTE_BYTES:
            raise NoteError(f"{what}: {st.st_size} bytes, larger than any signed note ({MAX_NOTE_BYTES})")
        return f.read(min(st.st_size, MAX_NOTE_BYTES) + 1)


def parse_note(data: bytes, what: str = "note") -> Note:
    """Split a signed note into text and signature lines (signed-note §Format)."""
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError(f"{what}: not UTF-8 at byte {exc.start}") from exc
    if any(ord(c) < 0x20 and c != "\n" for c in s):
        raise NoteError(f"{what}: contains a control character")
    cut = s.rfind("\n\n")
    if cut < 0 or not s.endswith("\n"):
        raise NoteError(f"{what}: no blank line between text and signatures")
    text, sigs = s[: cut + 1], s[cut + 2 :]
    lines = sigs.split("\n")[:-1]
    if not lines or len(lines) > MAX_SIGNATURES:
        raise NoteError(f"{what}: expected 1..{MAX_SIGNATURES} signature lines, got {len(lines)}")
    out = []
    for n, line in enumerate(lines, 1):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH or not parts[1]:
            raise NoteError(f"{what}: signature line {n} is not '— <name> <base64>'")
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except (ValueError, binascii.Error) as exc:  # ValueError: non-ASCII text in a str
            raise NoteError(f"{what}: signature line {n}: bad base64") from exc
        if len(raw) < 5:
            raise NoteError(f"{what}: signature line {n} is too short")
        out.append(SignatureLine(parts[1], int.from_bytes(raw[:4], "big"), raw[4:], line + "\n"))
    return Note(text.encode(), tuple(out))


def verified_by(note: Note, verifiers: list[Verifier]) -> dict[str, int]:
    """Names of the known keys whose signatures verify, with their timestamps.

    Unknown (name, id) pairs are ignored; a known key with a bad signature raises, as the
    spec says a client SHOULD reject the whole note.
    """
    known = {(v.name, v.id): v for v in verifiers}
    ok: dict[str, int] = {}
    for sig in note.signatures:
        v = known.get((sig.name, sig.id))
        if v is None:
            continue
        ts = v.verify(note.text, sig.sig)
        if ts is None:
            raise NoteError(f"signature by {sig.name} ({sig.id:08x}) does not verify")
        ok[v.vkey()] = ts
    return ok


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> bytes:
        body = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return ("\n".join(body) + "\n").encode()


def parse_checkpoint(text: bytes, what: str = "checkpoint") -> Checkpoint:
    """tlog-checkpoint §Note text: origin, decimal size, base64 root, extension lines."""
    try:
        lines = text.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise NoteError(f"{what}: not UTF-8 at byte {exc.start}") from exc
    if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
        raise NoteError(f"{what}: expected origin, size and root hash lines")
    origin, size_s, root_s = lines[:3]
    if not size_s.isascii() or not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")):
        raise NoteError(f"{what}: tree size {size_s[:24]!r} is not a canonical decimal")
    if len(size_s) > 20 or int(size_s) >= 1 << 64:  # int() refuses over 4300 digits
        raise NoteError(f"{what}: tree size {size_s[:24]!r}... is larger than a uint64")
    try:
        root = base64.b64decode(root_s, validate=True)
    except (ValueError, binascii.Error) as exc:  # ValueError: non-ASCII text in a str
        raise NoteError(f"{what}: root hash is not base64") from exc
    if len(root) != 32:
        raise NoteError(f"{what}: root hash has {len(root)} bytes, expected 32")
    return Checkpoint(origin, int(size_s), root, tuple(lines[3:-1]))


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> bytes:
    text = cp.text()
    return text + b"\n" + signer.sign_line(text).encode()


def open_checkpoint(data: bytes, log_key: Verifier, what: str = "checkpoint") -> tuple[Checkpoint, Note]:
    """Parse a signed checkpoint and require a valid signature by the log key."""
    note = parse_note(data, what)
    try:
        ok = verified_by(note, [log_key])
    except NoteError as exc:
        raise NoteError(f"{what}: {exc}") from exc
    if not ok:
        raise NoteError(f"{what}: not signed by {log_key.name} ({log_key.id:08x})")
    return parse_checkpoint(note.text, what), note
