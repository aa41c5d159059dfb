"""Admission decisions into the audit log (record stage of the webhook).

One record per judged review: who asked for what, the verdict, every finding with its mode, and
what the checks learnt (image digests and verdicts, GPU usage). Records are bounded: an entry of
a C2SP tile log holds at most 64 KiB, so oversize parts are cut with a marker, never dropped
silently. The record also keeps what a replay needs to judge the request again
(``portcullis replay``): the object and old object (secrets redacted, see ``redact``), inline
when small, else their SHA-256 with the canonical JSON in the object store beside the log, plus
the user's groups and the namespace labels the checks saw. Whether the webhook waits for
durability, and what happens when the log fails, is set by ``audit.wait_durable`` and
``audit.failure_mode``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Protocol

import orjson

from webhook import errors
from webhook.admission import redact
from webhook.admission.review import ReviewRequest
from webhook.audit import objects as object_store
from webhook.audit import records
from webhook.checks.pipeline import Outcome
from webhook.core import workloads
from webhook.core.deadline import Deadline

log = logging.getLogger("portcullis.audit")

_MAX_FINDINGS = 100
_MAX_TEXT = 1000
_MAX_CONTEXT_BYTES = 16 * 1024
# Canonical JSON bytes of an object kept inline in the record; larger ones go to the object store.
INLINE_OBJECT_BYTES = 16 * 1024
# What the inline objects may add to a record: the whole entry must stay under the tile log's
# 64 KiB (records.MAX_RECORD) with room for the envelope (time, writer), or the append would fail.
_RECORD_BUDGET = 60 * 1024
_SIZE_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


class AppendOnlyLog(Protocol):
    def append(self, kind: Any, content: dict[str, Any]) -> Awaitable[int]: ...


class AuditUnavailable(Exception):
    """Raised to the server when a decision could not be recorded and the failure mode is deny."""


def decision_record(endpoint: str, request: ReviewRequest, outcome: Outcome) -> dict[str, Any]:
    """The record's content: stable keys, bounded size (objects too large to inline are only hashed;
    ``record_with_objects`` also returns their bytes for the store)."""
    return record_with_objects(endpoint, request, outcome)[0]


def record_with_objects(endpoint: str, request: ReviewRequest, outcome: Outcome) -> tuple[dict[str, Any], list[bytes]]:
    """The record's content and the canonical bytes of the objects it names only by hash."""
    verdict = outcome.verdict
    findings = [
        {
            "check": f.violation.check,
            "mode": f.mode.value,
            "container": f.violation.container,
            "path": f.violation.path,
            "message": _cut(f.violation.message),
        }
        for f in verdict.findings[:_MAX_FINDINGS]
    ]
    record: dict[str, Any] = {
        "endpoint": endpoint,
        "uid": request.uid,
        "operation": request.operation,
        "kind": request.kind,
        "subresource": request.subresource,
        "namespace": request.namespace,
        "name": request.name or workloads.object_name(request.object),
        "user": request.username,
        "dry_run": request.dry_run,
        "allowed": verdict.allowed,
        "result": outcome.result,
        "findings": findings,
        "warnings": [_cut(w) for w in verdict.warnings[:_MAX_FINDINGS]],
        "images": _images(outcome),
        "groups": list(request.groups),
        "namespace_labels": dict(outcome.namespace_labels),
    }
    if len(verdict.findings) > _MAX_FINDINGS:
        record["findings_truncated"] = len(verdict.findings) - _MAX_FINDINGS
    if verdict.exempt_reason:
        record["exempt"] = verdict.exempt_reason
    if verdict.skipped_reason:
        record["skipped"] = verdict.skipped_reason
    context = _jsonable(outcome.context)
    if context:
        encoded = orjson.dumps(context, default=str)
        record["context"] = context if len(encoded) <= _MAX_CONTEXT_BYTES else {"truncated_bytes": len(encoded)}
    blobs: list[bytes] = []
    redacted: list[str] = []
    # 1 KiB for the keys added below; orjson's size is JCS's to within float formatting
    room = _RECORD_BUDGET - len(orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS)) - 1024
    for field, obj in (("object", request.object), ("old_object", request.old_object)):
        if obj is None:
            continue
        if redact.is_secret(request.kind, obj):
            record[f"{field}_redacted"] = True
            redacted.append(f"{field}: <the whole Secret>")
            continue
        try:
            # Sorted orjson has JCS's size to within float formatting, and refuses what JCS refuses
            # (integers beyond 2**53): the exact encoding runs once, for the whole record, unless
            # the object goes to the store, where its bytes are hashed.
            data = orjson.dumps(obj, option=_SIZE_OPTS)
            kept: Any = obj
            if redact.may_hold_secrets(data):  # most objects have no env values, no last-applied copy
                kept, paths = redact.redact(request.kind, obj)
                redacted += [f"{field}: {p}" for p in paths]
                data = orjson.dumps(kept, option=_SIZE_OPTS)
            if len(data) <= min(INLINE_OBJECT_BYTES, room):
                record[field] = kept
                room -= len(data)
                continue
            data = records.canonical(kept)
        except (orjson.JSONEncodeError, records.RecordError) as exc:  # an integer JSON cannot hold exactly
            record[f"{field}_unrecordable"] = _cut(str(exc))
            continue
        record[f"{field}_sha256"] = object_store.digest(data)
        blobs.append(data)
    if redacted:
        record["redacted"] = redacted
    return record, blobs


def _images(outcome: Outcome) -> list[str]:
    images: list[str] = []
    for pod in outcome.pods:
        for field in ("initContainers", "containers", "ephemeralContainers"):
            for c in pod.spec.get(field) or ():
                image = c.get("image") if isinstance(c, dict) else None
                if isinstance(image, str):
                    images.append(image)
    return list(dict.fromkeys(images))[:_MAX_FINDINGS]


def _jsonable(value: Any) -> Any:
    try:
        return orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))
    except (TypeError, orjson.JSONEncodeError):
        return {"unserialisable": True}


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…[cut]"


class AuditRecorder:
    """Writes decisions; with ``wait_durable`` the answer waits for the record to be on disk."""

    def __init__(
        self,
        audit_log: AppendOnlyLog,
        *,
        wait_durable: bool,
        deny_on_failure: bool,
        max_pending: int = 10_000,
        objects: object_store.ObjectStore | None = None,
    ) -> None:
        self._log = audit_log
        self._objects = objects
        self._wait = wait_durable
        self._deny = deny_on_failure
        self._pending: set[asyncio.Task[int]] = set()
        self._max_pending = max_pending
        self.failures = 0
        self.dropped = 0

    async def record(
        self, endpoint: str, request: ReviewRequest, outcome: Outcome, *, deadline: Deadline | None = None
    ) -> None:
        """Hand the decision to the log; with ``wait_durable``, wait for it within ``deadline``.

        The write itself is shielded: past the deadline the answer stops waiting (an audit
        failure, denied under ``failure_mode: deny``) while the record still reaches the log.
        """
        content, blobs = record_with_objects(endpoint, request, outcome)
        if self._wait:
            try:
                write = asyncio.ensure_future(self._append(content, blobs))
                if deadline is None:
                    await write
                else:
                    try:
                        await deadline.run(asyncio.shield(write), "writing the audit record")
                    except errors.DeadlineExceeded:
                        self._pending.add(write)  # still written; its outcome is logged by _done
                        write.add_done_callback(self._done)
                        raise
            except Exception as exc:
                self.failures += 1
                log.error("AUDIT LOG FAILURE: decision %s not recorded: %s", request.uid, exc)
                if self._deny:
                    raise AuditUnavailable(f"the audit log cannot record decisions: {exc}") from exc
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            log.error(
                "AUDIT LOG BACKLOG: %d records pending; decision %s not recorded", len(self._pending), request.uid
            )
            if self._deny:
                raise AuditUnavailable("the audit log is too far behind to record decisions")
            return
        task = asyncio.create_task(self._append(content, blobs))
        self._pending.add(task)
        task.add_done_callback(self._done)

    async def _append(self, content: dict[str, Any], blobs: list[bytes]) -> int:
        """Store large objects first: a record never names an object the store does not hold."""
        if blobs and self._objects is not None:
            store = self._objects
            await asyncio.to_thread(lambda: [store.put(blob) for blob in blobs])
        return await self._log.append("admission", content)

    def _done(self, task: asyncio.Task[int]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failures += 1
            log.error("AUDIT LOG FAILURE: a decision was not recorded: %s", task.exception())

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
