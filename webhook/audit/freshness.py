"""Freshness of a verified log: is it the newest state, or an older signed one put back?

Called by ``verify``. A log directory alone cannot tell: whoever can write it can truncate it and
copy an older signed ``checkpoints/N`` over ``checkpoint``, and every remaining file verifies.
Only something outside the directory can anchor the size: a witness cosignature, a published
copy, a checkpoint the verifier kept (``--trusted-checkpoint``) or a size it knows
(``--min-size``). This module says which anchors hold, and what size each vouches for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from webhook.audit import note


@dataclass(frozen=True, slots=True)
class Anchors:
    """What the verifier brings from outside the log directory."""

    published: Sequence[Path] = ()  # publish directories (``dir:PATH`` of the writer)
    trusted: Sequence[Path] = ()  # signed checkpoint files obtained out of band
    min_size: int | None = None  # a size the log is known to have reached
    require: bool = False  # an unanchored log is a problem, not just a statement


@dataclass(frozen=True, slots=True)
class Anchor:
    size: int
    how: str


def load_trusted(
    paths: Sequence[Path], log_key: note.Verifier | None, origin: str | None
) -> tuple[list[tuple[str, note.Checkpoint]], list[str]]:
    """Trusted checkpoints (signed by the log key, same origin) and the problems found."""
    out: list[tuple[str, note.Checkpoint]] = []
    problems: list[str] = []
    for path in paths:
        what = str(path)
        if log_key is None:
            problems.append(f"{what}: a trusted checkpoint needs the log's public key to be checked")
            continue
        try:
            cp, _ = note.open_checkpoint(note.read_note(path, what), log_key, what)
        except OSError as exc:
            problems.append(f"{what}: trusted checkpoint unreadable ({exc.strerror})")
            continue
        except note.NoteError as exc:
            problems.append(str(exc))
            continue
        if origin is not None and cp.origin != origin:
            problems.append(f"{what}: origin {cp.origin!r}, but the log's is {origin!r}")
            continue
        out.append((what, cp))
    return out, problems


def assess(
    external: Sequence[tuple[str, str, note.Checkpoint]],
    root_of: Callable[[int], bytes | None],
    log_size: int,
    signed_size: int | None,
    cosignatures: dict[str, int],
    min_size: int | None,
) -> tuple[list[Anchor], list[str]]:
    """Anchors that hold, and problems (an anchor the log no longer matches is a rollback).

    ``external`` is (kind, where, checkpoint) for published and trusted checkpoints;
    ``cosignatures`` maps witness keys that cosigned the latest checkpoint to their times.
    """
    anchors: list[Anchor] = []
    problems: list[str] = []
    for kind, where, cp in external:
        if cp.size <= log_size and root_of(cp.size) == cp.root:
            anchors.append(Anchor(cp.size, f"{kind} checkpoint {where} (size {cp.size})"))
        # a mismatch is already a problem of verify (records removed or altered)
    if cosignatures and signed_size is not None:
        newest = max(cosignatures.values())
        when = _stamp(newest)
        names = ", ".join(sorted(k.split("+", 1)[0] for k in cosignatures))
        how = (
            f"witness cosignature ({names}) of size {signed_size} at {when}: the witness saw this "
            "checkpoint then; compare with its latest to rule out a rollback to an older cosigned one"
        )
        anchors.append(Anchor(signed_size, how))
    if min_size is not None:
        have = signed_size or 0
        if have >= min_size:
            anchors.append(Anchor(min_size, f"known size --min-size {min_size}"))
        else:
            problems.append(
                f"the newest signed checkpoint has size {have}, below the known size {min_size} "
                "(records removed or the log rolled back)"
            )
    return anchors, problems


def _stamp(seconds: int) -> str:
    """A cosignature time (a signed uint64, so any value a witness key signed) in UTC."""
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # beyond year 9999 or the platform's time_t
        return f"{seconds} seconds after the epoch (out of range)"


UNANCHORED = (
    "freshness not anchored: nothing outside the log vouches for its size, so a rollback to an "
    "older signed checkpoint cannot be detected (give --witness-key, --published, "
    "--trusted-checkpoint or --min-size)"
)
