"""The audit log writer: sequencing, durable group commit, signed checkpoints, witnessing.

Called by the admission webhook and the runtime monitor (``await log.append(...)``) and by
``portcullis audit append``. One writer task owns the files; callers await the index of
their record, which is returned only once the record and its tiles are fsynced.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import orjson

from webhook import errors
from webhook.audit import merkle, note, publish, records, store, tiles, witness
from webhook.audit.records import AuditRecord
from webhook.audit.tiles import ENTRIES, TILE_WIDTH

__all__ = ["AuditLog", "AuditRecord", "LogClosedError", "read_records"]

log = logging.getLogger("portcullis.audit")
_DEPTH = 4  # batches written at once (acknowledged in order)
_Write = tuple["asyncio.Future[None]", int, list["asyncio.Future[int]"], list[tiles.TileId]]
CHECKPOINT = "checkpoint"
HISTORY = "checkpoints"


class LogClosedError(errors.PortcullisError):
    """An append was made after ``close()`` or after a write to disk failed."""


class AuditLog:
    """An open, append-only tile log. Create with ``await AuditLog.open(...)``."""

    def __init__(
        self,
        tilestore: store.TileStore,
        signer: note.Signer | None,
        origin: str,
        writer: str,
        commit_window: float,
        checkpoint_every: int,
        checkpoint_interval: float,
        witnesses: list[witness.WitnessEndpoint],
    ) -> None:
        self.directory = tilestore.root
        self.origin = origin
        self.writer = writer
        self._store = tilestore
        self._signer = signer
        self._window = commit_window
        self._cp_every = checkpoint_every
        self._cp_interval = checkpoint_interval
        self._witnesses = witnesses
        # Records for the next group commit, side by side with their waiters, as the writer's
        # ``GroupEncoder`` takes them: content JSON with kind and time (or a finished entry,
        # kind None). Three flat lists of bytes, strings and ints hold nothing the cyclic
        # garbage collector has to walk while a group gathers.
        self._kinds: list[str | None] = []
        self._pending: list[bytes] = []
        self._times: list[int] = []
        self._encoder = records.GroupEncoder(writer)
        self._waiters: list[asyncio.Future[int]] = []
        self._loop = asyncio.get_running_loop()  # the writer task's loop, looked up once
        self._wake = asyncio.Event()
        self._closing = False
        self._failed: BaseException | None = None
        self._cp_size = -1
        self._durable_size = tilestore.size
        self._cp_task: asyncio.Task[None] | None = None
        self._snapshot: tuple[int, bytes, store.Batch] | None = None
        self._cp_time = time.monotonic()
        self._cp_lock = asyncio.Lock()
        self._witness_task: asyncio.Task[None] | None = None
        self._witness_sizes: dict[str, int] = {}
        self._cp_signed = b""
        self._cosigned_size = -1
        self._publish_dirs: list[Path] = []
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        signing_key_path: Path | None,
        origin: str,
        writer: str,
        commit_window: float = 0.005,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 10.0,
        durable: bool = True,
        witnesses: Iterable[witness.WitnessEndpoint | str] = (),
    ) -> AuditLog:
        """Open (creating or recovering) the log in ``directory`` and start its writer task.

        Raises ``AuditFormatError`` if the directory holds a log that does not match its
        latest checkpoint (tampering, or acknowledged records lost).
        """
        directory = Path(directory)
        witnesses = list(witnesses)
        signer = note.load_signer(Path(signing_key_path)) if signing_key_path else None
        if not origin or "\n" in origin:
            raise errors.ConfigError(f"audit log origin {origin!r} must be one non-empty line")
        verifier = signer.verifier if signer else None
        tilestore = await asyncio.to_thread(store.TileStore.recover, directory, durable, verifier, origin)
        try:
            return await cls._start(
                tilestore, signer, origin, writer, commit_window, checkpoint_every, checkpoint_interval, witnesses
            )
        except BaseException:
            tilestore.close()
            raise

    @classmethod
    async def _start(
        cls,
        tilestore: store.TileStore,
        signer: note.Signer | None,
        origin: str,
        writer: str,
        commit_window: float,
        checkpoint_every: int,
        checkpoint_interval: float,
        witnesses: list[witness.WitnessEndpoint | str],
    ) -> AuditLog:
        self = cls(
            tilestore,
            signer,
            origin,
            writer,
            commit_window,
            checkpoint_every,
            checkpoint_interval,
            [witness.WitnessEndpoint.parse(w) for w in witnesses if not _publish_target(w)],
        )
        self._publish_dirs = [d for w in witnesses if (d := _publish_target(w)) is not None]
        self._cp_size = tilestore.floor.size if tilestore.floor else -1
        if signer is not None and tilestore.floor is None:
            await self._sign_empty_tree(signer)
        self._task = asyncio.create_task(self._run(), name=f"audit-writer:{origin}")
        return self

    async def _sign_empty_tree(self, signer: note.Signer) -> None:
        """A new log signs its empty tree before its first append: from then on a log holding
        entries but no checkpoint is one whose checkpoints were deleted, and reopening refuses
        it (a writer must not sign, as its own, entries nothing vouched for)."""
        signed = note.sign_checkpoint(note.Checkpoint(self.origin, 0, merkle.EMPTY_ROOT), signer)
        await asyncio.to_thread(self._write_checkpoint, signed, 0)
        self._cp_size, self._cp_signed = 0, signed

    @property
    def root(self) -> bytes:
        """Root hash over the entries staged so far (equal to ``size``'s tree)."""
        return self._store.root_hash()

    @property
    def size(self) -> int:
        """Entries staged so far (acknowledged ones are a prefix of these)."""
        return self._store.size

    def append(self, kind: Literal["admission", "alert", "config"], content: dict[str, Any]) -> asyncio.Future[int]:
        """Append one record; the returned future gives its leaf index once it is durable on disk
        (``index = await log.append(...)``).

        The record is taken now, at the call: its time and its content as JSON bytes (the
        writer assembles the records of a group at once). A plain function, not a coroutine:
        the append path runs once per admission, and ``asyncio.gather`` over many appends gets
        futures to wait on instead of a task to create for each. Content that cannot be
        encoded fails the future with ``RecordError`` (for a float whose exact form is too long,
        once its group is encoded), as ``records.encode_record`` would, and is not written; a
        closed log fails it with ``LogClosedError``.
        """
        fut: asyncio.Future[int] = self._loop.create_future()
        if self._closing or self._failed is not None:
            closed = LogClosedError(f"audit log {self.directory} is closed")
            closed.__cause__ = self._failed
            fut.set_exception(closed)
            return fut
        ns = records.now_ns()
        body = records.content_json(content) if kind in records.KINDS and isinstance(content, dict) else None
        if body is None:  # off the fast path: encoded exactly now (naming why it cannot be)
            try:
                body = records.encode_record(records.stamp(ns), kind, self.writer, content)
            except Exception as exc:  # RecordError, or the encoder's own limits (deep nesting)
                fut.set_exception(exc)
                return fut
            self._kinds.append(None)
        else:
            self._kinds.append(kind)
        del content  # not held while the group gathers
        self._pending.append(body)
        self._times.append(ns)
        self._waiters.append(fut)
        self._wake.set()
        return fut

    async def close(self) -> None:
        """Flush pending records, write a final checkpoint and stop the writer."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None
        try:
            if self._failed is None:
                await self._checkpoint(force=True)
            elif self._cp_task is not None:
                with contextlib.suppress(Exception):
                    await self._cp_task
            if self._witness_task is not None:
                await self._witness_task
            # A checkpoint made while an earlier push was in flight has not been witnessed yet.
            if self._witnesses and self._cp_signed and self._cosigned_size != self._cp_size:
                await self._cosign(self._cp_signed, self._cp_size)
        finally:
            self._store.close()  # also releases the writer lock

    # -- writer task ------------------------------------------------------------------------

    async def _run(self) -> None:
        """Group commit, pipelined: while up to ``_DEPTH`` batches are being written the next is
        staged, batches are acknowledged in order once their write has completed, and
        checkpoints are written in the background from a snapshot of the tree."""
        inflight: collections.deque[_Write] = collections.deque()
        try:
            while True:
                self._raise_checkpoint_failure()
                if not self._pending:
                    if inflight:  # producers woken by the last acks encode meanwhile
                        await self._settle(*inflight[0])
                        inflight.popleft()  # only once settled: a failed batch is failed below
                        self._launch_checkpoint()
                        if not inflight and not self._pending:
                            # Let the callers just acknowledged append again before deciding
                            # the log is idle (and waiting out the group-commit window).
                            await asyncio.sleep(0)
                        continue
                    if self._closing:
                        return
                    self._wake.clear()
                    timeout = max(0.0, self._cp_interval - (time.monotonic() - self._cp_time))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await self._wake.wait()
                    if not self._pending:
                        self._snapshot_if_due()
                        self._launch_checkpoint()
                        continue
                    await self._gather()
                # All that is pending goes as one group, however it came: under a steady load
                # the groups then keep the size of the crowd of callers waiting on them, and
                # once one ends on a bundle boundary each write is whole bundles (no partial
                # to write, and none to delete a group later). Cutting a backlog in parts to
                # overlap writes was measured slower: more files and more fsyncs per record.
                entries, waiters = self._take(len(self._pending))
                if not entries:
                    continue
                self._snapshot_if_due()  # the tree as of the end of what is staged so far
                first = self._store.size
                try:
                    staged = self._store.stage(entries)
                except BaseException:
                    self._waiters[:0] = waiters  # failed with the rest below
                    raise
                while len(inflight) >= _DEPTH:
                    await self._settle(*inflight[0])
                    inflight.popleft()
                    self._launch_checkpoint()
                job = asyncio.ensure_future(asyncio.to_thread(self._store.write, staged))
                inflight.append((job, first, waiters, staged.retired))
        except BaseException as exc:  # the in-memory edge is now ahead of disk: stop
            self._failed = exc
            log.error("audit log %s: write failed, log closed: %s", self.directory, exc)
            waiting = [fut for _, _, b, _ in inflight for fut in b] + self._waiters
            for write, _, _, _ in inflight:
                if not write.done():
                    with contextlib.suppress(BaseException):
                        await asyncio.shield(write)
            for fut in waiting:
                if not fut.done():
                    fut.set_exception(LogClosedError(f"audit log write failed: {exc}"))
            self._kinds, self._pending, self._times, self._waiters = [], [], [], []
            self._closing = True
            if not isinstance(exc, Exception):
                raise

    def _take(self, count: int) -> tuple[list[bytes], list[asyncio.Future[int]]]:
        """The first ``count`` pending records, encoded, with their waiters; a record that cannot
        be encoded fails its own append and is left out."""
        kinds, bodies, times, waiters = self._kinds, self._pending, self._times, self._waiters
        if count >= len(bodies):
            self._kinds, self._pending, self._times, self._waiters = [], [], [], []
        else:
            kinds, self._kinds = kinds[:count], kinds[count:]
            bodies, self._pending = bodies[:count], bodies[count:]
            times, self._times = times[:count], times[count:]
            waiters, self._waiters = waiters[:count], waiters[count:]
        entries, bad = self._encoder.encode(kinds, bodies, times)
        if not bad:
            return entries, waiters
        for i, exc in bad.items():
            if not waiters[i].done():
                waiters[i].set_exception(exc)
        keep = [i for i in range(len(entries)) if i not in bad]
        return [entries[i] for i in keep], [waiters[i] for i in keep]

    async def _settle(
        self,
        write: asyncio.Future[None],
        first: int,
        waiters: list[asyncio.Future[int]],
        retired: list[tiles.TileId],
    ) -> None:
        """Wait for a batch's write, then acknowledge each record with its index. Batches
        settle in order, so partials it retires can no longer be in the making."""
        await write
        self._durable_size = first + len(waiters)
        for fut, index in zip(waiters, range(first, first + len(waiters)), strict=True):
            if not fut.done():  # a caller that gave up (cancelled) still has its record written
                fut.set_result(index)
        if retired:
            await asyncio.to_thread(self._store.retire, retired)

    def _checkpoint_due(self, size: int) -> bool:
        if self._snapshot is not None or (self._cp_task is not None and not self._cp_task.done()):
            return False
        return size - max(self._cp_size, 0) >= self._cp_every or time.monotonic() - self._cp_time >= self._cp_interval

    def _snapshot_if_due(self) -> None:
        """Freeze the tree's root and tiles at the current staged size, to be signed once
        every entry up to it is durable. Partials of that size are kept from now on."""
        if not self._checkpoint_due(self._store.size):
            return
        self._cp_time = time.monotonic()
        size = self._store.size
        if not self._store.signed_sizes or self._store.signed_sizes[-1] < size:
            self._store.signed_sizes.append(size)
        self._snapshot = size, self._store.root_hash(), self._store.flush_tiles()

    def _launch_checkpoint(self) -> None:
        if self._snapshot is not None and self._durable_size >= self._snapshot[0]:
            self._cp_task = asyncio.create_task(self._commit_checkpoint(*self._snapshot))
            self._snapshot = None

    def _raise_checkpoint_failure(self) -> None:
        task = self._cp_task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            raise LogClosedError(f"audit log {self.directory}: checkpoint failed") from task.exception()

    async def _gather(self) -> None:
        """Group commit: wait up to the window while records keep arriving, then commit.

        Under load the fsync of the previous batch is the natural window (everyone who
        arrives meanwhile joins the next batch); at low load this waits at most one window.
        """
        deadline = time.monotonic() + self._window
        while not self._closing:
            n = len(self._pending)
            await asyncio.sleep(0)
            if len(self._pending) == n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                await asyncio.sleep(min(remaining, 0.0005))
                if len(self._pending) == n:
                    return
            if time.monotonic() >= deadline:
                return

    # -- checkpoints ------------------------------------------------------------------------

    async def _checkpoint(self, force: bool = False) -> None:
        """Checkpoint now (the writer is stopped or idle: every staged entry is durable)."""
        if self._cp_task is not None:
            await self._cp_task
        if self._snapshot is not None:  # the writer stopped: everything staged is durable
            self._cp_task, self._snapshot = asyncio.create_task(self._commit_checkpoint(*self._snapshot)), None
            await self._cp_task
        self._cp_time = time.monotonic()
        size = self._store.size
        if not self._store.signed_sizes or self._store.signed_sizes[-1] < size:
            self._store.signed_sizes.append(size)
        await self._commit_checkpoint(size, self._store.root_hash(), self._store.flush_tiles(), force)

    async def _commit_checkpoint(self, size: int, root: bytes, tileset: store.Batch, force: bool = False) -> None:
        """Write the tiles of ``size``, then sign and write the checkpoint over them."""
        if tileset.files:
            await asyncio.to_thread(self._store.write, tileset)
            await asyncio.to_thread(self._store.retire, tileset.retired)
        if self._signer is None:
            self._cp_size = size  # a log without a key: its tiles are what a checkpoint would cover
            return
        if size == self._cp_size or (size == 0 and not force):
            return
        signed = note.sign_checkpoint(note.Checkpoint(self.origin, size, root), self._signer)
        async with self._cp_lock:
            await asyncio.to_thread(self._write_checkpoint, signed, size)
        self._cp_size = size
        self._cp_signed = signed
        for target in self._publish_dirs:
            try:
                await asyncio.to_thread(publish.publish, target, self.origin, signed, self._store.durable)
            except OSError as exc:  # failure mode: logged; the local log is unaffected
                log.warning("audit log %s: cannot publish checkpoint to %s: %s", self.directory, target, exc)
        if self._witnesses and (self._witness_task is None or self._witness_task.done()):
            self._witness_task = asyncio.create_task(self._cosign(signed, size))

    def _write_checkpoint(self, signed: bytes, size: int) -> None:
        """``checkpoint`` first, then its copy in ``checkpoints/``: a crash between the two
        leaves the newest checkpoint in place and only its history copy missing (which the
        next open restores), never a ``checkpoint`` older than a kept one."""
        durable = self._store.durable
        store.write_atomic(self.directory / CHECKPOINT, signed, durable, 0o644)
        store.write_atomic(self.directory / HISTORY / str(size), signed, durable, 0o644)

    async def _cosign(self, signed: bytes, size: int) -> None:
        """Push a checkpoint to the witnesses and fold their cosignatures into the stored copy."""
        reader = tiles.TileReader(self.directory, size)

        def proof(old: int) -> list[bytes]:
            return merkle.consistency_proof(reader.node, old, size)

        try:
            lines = await witness.collect_cosignatures(self._witnesses, signed, size, proof, self._witness_sizes)
            self._cosigned_size = size
            if lines:
                async with self._cp_lock:
                    await asyncio.to_thread(self._add_cosignatures, signed, size, lines)
        except Exception as exc:  # failure mode: witnessing is best effort, never fatal to the log
            log.warning("audit log %s: witnessing checkpoint %d failed: %s", self.directory, size, exc)

    def _add_cosignatures(self, signed: bytes, size: int, lines: list[str]) -> None:
        extra = "".join(lines).encode()
        for path in (self.directory / CHECKPOINT, self.directory / HISTORY / str(size)):
            if path.exists() and path.read_bytes() == signed:
                store.write_atomic(path, signed + extra, self._store.durable, 0o644)


def _publish_target(value: witness.WitnessEndpoint | str) -> Path | None:
    return publish.parse_target(value) if isinstance(value, str) else None


def read_records(directory: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Iterate ``(index, record)`` over a log directory's entry bundles, in order.

    Reads full bundles then the widest partial bundle; raises ``AuditFormatError`` on a
    malformed bundle (use ``portcullis audit verify`` to locate tampering).
    """
    for index, entry in iter_entries(Path(directory)):
        try:
            yield index, orjson.loads(entry)
        except orjson.JSONDecodeError as exc:
            raise records.RecordError(f"{directory}: entry {index} is not JSON ({exc})") from exc


def iter_entries(directory: Path) -> Iterator[tuple[int, bytes]]:
    """Raw entries of a log directory, bundle by bundle (the widest whole partial bundle at
    the end: a wider one torn by a crash, never acknowledged, is skipped)."""
    index = 0
    bundle = 0
    while True:
        path = directory / tiles.tile_path(ENTRIES, bundle)
        entries = _whole(path, TILE_WIDTH) if path.exists() else None
        if entries is None and path.exists() and _exists(directory, bundle + 1):
            raise records.RecordError(f"{path}: not a whole bundle (run 'portcullis audit verify')")
        if entries is None:  # no full bundle, or one torn by a crash before it was acknowledged
            entries = _widest_partial(directory, bundle)
        for entry in entries:
            yield index, entry
            index += 1
        if len(entries) < TILE_WIDTH:
            return
        bundle += 1


def _widest_partial(directory: Path, bundle: int) -> list[bytes]:
    for width in store._partial_widths(directory, ENTRIES, bundle):
        entries = _whole(directory / tiles.tile_path(ENTRIES, bundle, width), width)
        if entries is not None:
            return entries
    return []


def _exists(directory: Path, bundle: int) -> bool:
    path = directory / tiles.tile_path(ENTRIES, bundle)
    return path.exists() or path.with_name(path.name + ".p").is_dir()


def _whole(path: Path, width: int) -> list[bytes] | None:
    """The entries of a bundle file if it holds exactly ``width`` of them."""
    try:
        entries = tiles.decode_bundle(path.read_bytes())
    except (OSError, tiles.TileFormatError):
        return None
    return entries if len(entries) == width else None
