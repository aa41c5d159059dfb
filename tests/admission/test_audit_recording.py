"""Every judged review lands in the audit log (a real tile log on disk); dry runs do not (NoneOnDryRun)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webhook.audit.commands import register  # noqa: F401  (the audit face must be importable)
from webhook.audit.log import read_records

from .conftest import pod, review
from .test_pipeline import privileged_pod
from .test_server import DenyPrivileged, pipeline_with


async def test_decisions_are_recorded_with_findings_but_dry_runs_are_not(start_webhook: Any, tmp_path: Path) -> None:
    log_dir = tmp_path / "audit"
    cfg = {"audit": {"directory": str(log_dir), "origin": "test.local/admission", "commit_window": 0.001}}
    async with start_webhook(cfg, pipeline=pipeline_with(DenyPrivileged(), cfg=cfg)) as hook:
        ok = review(pod())
        dry = review(privileged_pod(), dry_run=True)
        bad = review(privileged_pod())
        await hook.post("/validate", ok)
        _status, dry_body = await hook.post("/validate", dry)
        _status, body = await hook.post("/validate", bad)
        assert dry_body["response"]["allowed"] is False
        assert body["response"]["allowed"] is False
    records = [r for _, r in read_records(log_dir)]
    assert [r["kind"] for r in records] == ["admission", "admission"]
    first, second = (r["content"] for r in records)
    assert first["uid"] == ok["request"]["uid"]
    assert first["allowed"] is True
    assert second["uid"] == bad["request"]["uid"]
    assert second["dry_run"] is False
    assert second["result"] == "denied"
    assert second["findings"][0]["check"] == "privilege"
    assert second["findings"][0]["path"] == "spec.containers[0].securityContext.privileged"
    assert second["images"] == ["x"]


async def test_audit_failure_denies_when_failure_mode_is_deny(start_webhook: Any, tmp_path: Path) -> None:
    class BrokenLog:
        async def append(self, kind: Any, content: dict[str, Any]) -> int:
            raise OSError(28, "No space left on device")

    from webhook.admission.recorder import AuditRecorder

    recorder = AuditRecorder(BrokenLog(), wait_durable=True, deny_on_failure=True)
    async with start_webhook(recorder=recorder) as hook:
        status, body = await hook.post("/validate", review(pod()))
    assert status == 200
    assert body["response"]["allowed"] is False
    assert "No space left on device" in body["response"]["status"]["message"]
    assert recorder.failures == 1


async def test_audit_failure_allows_loudly_when_failure_mode_is_allow(start_webhook: Any, caplog: Any) -> None:
    class BrokenLog:
        async def append(self, kind: Any, content: dict[str, Any]) -> int:
            raise OSError(28, "No space left on device")

    from webhook.admission.recorder import AuditRecorder

    recorder = AuditRecorder(BrokenLog(), wait_durable=True, deny_on_failure=False)
    async with start_webhook(recorder=recorder) as hook:
        _status, body = await hook.post("/validate", review(pod()))
    assert body["response"]["allowed"] is True
    assert "AUDIT LOG FAILURE" in caplog.text


async def test_waiting_for_a_durable_record_is_bounded_by_the_request_budget(start_webhook: Any) -> None:
    """A log that never confirms (a hung disk) cannot hold the answer past the budget: the
    review is answered as an audit failure (denied under failure mode deny), and the record
    is still handed to the log, not cancelled half-written."""
    import asyncio

    release = asyncio.Event()
    written: list[dict[str, Any]] = []

    class HungLog:
        async def append(self, kind: Any, content: dict[str, Any]) -> int:
            await release.wait()
            written.append(content)
            return 0

    from webhook.admission.recorder import AuditRecorder

    recorder = AuditRecorder(HungLog(), wait_durable=True, deny_on_failure=True)
    cfg = {"server": {"timeout_seconds": 1.0, "margin_seconds": 0.7}}
    async with start_webhook(cfg, recorder=recorder) as hook:
        status, body = await hook.post("/validate", review(pod()))
        release.set()
        await recorder.drain()
    assert status == 200
    assert body["response"]["allowed"] is False
    assert "writing the audit record" in body["response"]["status"]["message"]
    assert len(written) == 1
