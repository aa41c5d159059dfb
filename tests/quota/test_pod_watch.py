"""The pod watch feeding the ledger, against the local API server (``kubeapi.py``): list,
events, terminal pods, BOOKMARKs, 410 Gone re-lists, reconnects after the server goes down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from webhook.config import parse
from webhook.kube.namespaces import NamespaceDirectory
from webhook.quota.ledger import Ledger
from webhook.quota.model import QuotaModel
from webhook.quota.watch import PodWatch

QUOTA = {"quotas": [{"name": "all", "limit": 100}, {"name": "team", "per": "team", "limit": 10}]}


@pytest.fixture
async def watched(api: Any, kube_config: Any) -> AsyncIterator[tuple[PodWatch, Ledger, QuotaModel, NamespaceDirectory]]:
    model = QuotaModel(parse({"quota": QUOTA}).quota)
    ledger = Ledger(60.0)
    namespaces = NamespaceDirectory(api, kube_config)
    watch = PodWatch(api, kube_config, model, ledger, namespaces)
    namespaces.subscribe(watch.namespace_changed)
    await namespaces.start()
    await watch.start()
    yield watch, ledger, model, namespaces
    await watch.close()
    await namespaces.close()


def _gpus(ledger: Ledger, model: QuotaModel, key: str = "all") -> int:
    return ledger.used.get(key, 0) // model.scale


async def test_first_list_pages_then_events_follow(
    kube: Any, make_pod: Any, eventually: Any, api: Any, kube_config: Any
) -> None:
    for i in range(120):
        kube.put("pods", make_pod(f"p{i}", gpus=1 if i % 2 else None))
    model = QuotaModel(parse({"quota": QUOTA}).quota)
    ledger = Ledger(60.0)
    watch = PodWatch(api, kube_config, model, ledger)
    assert not watch.ready()
    await watch.start()
    try:
        assert await watch.wait_ready(10)
        assert len(ledger) == 60  # pods without GPUs are not kept
        assert _gpus(ledger, model) == 60
        kube.put("pods", make_pod("p1", gpus=3))  # MODIFIED
        kube.put("pods", make_pod("new", gpus=2))  # ADDED
        kube.delete("pods", "ml", "p3")  # DELETED
        await eventually(lambda: _gpus(ledger, model) == 60 + 2 + 2 - 1)
    finally:
        await watch.close()


async def test_terminal_pods_release_their_gpus(kube: Any, make_pod: Any, eventually: Any, watched: Any) -> None:
    watch, ledger, model, _ = watched
    assert await watch.wait_ready(10)
    kube.put("pods", make_pod("job", gpus=4, phase="Pending"))
    await eventually(lambda: _gpus(ledger, model) == 4)
    kube.put("pods", make_pod("job", gpus=4, phase="Succeeded"))
    await eventually(lambda: _gpus(ledger, model) == 0)
    kube.put("pods", make_pod("crash", gpus=2, phase="Failed"))
    kube.put("pods", make_pod("marker", gpus=1))
    await eventually(lambda: len(ledger) == 1)
    assert _gpus(ledger, model) == 1


async def test_team_label_change_moves_usage_between_teams(
    kube: Any, make_pod: Any, make_namespace: Any, eventually: Any, watched: Any
) -> None:
    _, ledger, model, _ = watched
    kube.put("namespaces", make_namespace("ml", team="vision"))
    kube.put("pods", make_pod("a", gpus=2))
    await eventually(lambda: _gpus(ledger, model, "team/team=vision") == 2)
    assert ledger.group_used["team=vision"] == 2 * model.scale
    kube.put("namespaces", make_namespace("ml", team="speech"))
    await eventually(lambda: _gpus(ledger, model, "team/team=speech") == 2)
    assert "team/team=vision" not in ledger.used
    assert "team=vision" not in ledger.group_used


async def test_bookmark_lets_the_watch_resume_after_compaction_without_a_list(
    kube: Any, make_pod: Any, eventually: Any, watched: Any
) -> None:
    watch, ledger, model, _ = watched
    assert await watch.wait_ready(10)
    kube.put("pods", make_pod("a", gpus=1))
    await eventually(lambda: _gpus(ledger, model) == 1)
    for _ in range(3):
        kube.bump()  # the version moves on with changes the pod watch does not see
    kube.bookmark()
    await eventually(lambda: watch.reflector.resource_version == str(kube.rv))
    kube.compact()
    kube.drop_watches()
    kube.put("pods", make_pod("b", gpus=2))
    await eventually(lambda: _gpus(ledger, model) == 3)
    assert watch.reflector.lists == 1
    assert watch.reflector.watches >= 2


async def test_410_gone_forces_a_fresh_list(kube: Any, make_pod: Any, eventually: Any, watched: Any) -> None:
    watch, ledger, model, _ = watched
    assert await watch.wait_ready(10)
    kube.put("pods", make_pod("a", gpus=1))
    kube.put("pods", make_pod("b", gpus=1))
    await eventually(lambda: _gpus(ledger, model) == 2)
    kube.bump()
    kube.compact()  # the watch's version is now older than the compaction point
    kube.drop_watches()
    kube.delete("pods", "ml", "a")
    await eventually(lambda: watch.reflector.lists == 2)
    await eventually(lambda: _gpus(ledger, model) == 1)
    assert any("ERROR" not in r and "watch=true" in r for r in kube.requests)


async def test_watch_reconnects_after_the_api_server_comes_back(
    kube: Any, make_pod: Any, eventually: Any, watched: Any
) -> None:
    watch, ledger, model, _ = watched
    assert await watch.wait_ready(10)
    kube.put("pods", make_pod("a", gpus=1))
    await eventually(lambda: _gpus(ledger, model) == 1)
    await kube.stop()
    await eventually(lambda: watch.reflector.last_error is not None and watch.reflector.stale_for() > 0)
    assert "refused" in watch.reflector.last_error.lower() or "connect" in watch.reflector.last_error.lower()
    kube.put("pods", make_pod("b", gpus=5))  # happens while the watch is away
    await kube.start()
    await eventually(lambda: _gpus(ledger, model) == 6)
    assert watch.reflector.stale_for() == 0


@pytest.mark.parametrize(
    ("amount", "gpus"),
    [
        ("500m", 1),  # rounded up to whole devices, as the scheduler's claim count is
        ("1500m", 2),
        ("-1", 0),
    ],
)
async def test_a_stored_pod_the_check_would_refuse_is_counted_never_dropped(
    kube: Any, make_pod: Any, eventually: Any, watched: Any, amount: str, gpus: int
) -> None:
    """The watch counts pods the API server stored. Amounts the admission check refuses (a
    fraction of an extended resource, which a DRA device class asked for by name may take; a
    negative) are counted as the whole devices they get, never dropped from the ledger."""
    _, ledger, model, _ = watched
    kube.put("pods", make_pod("odd", gpus=amount))
    kube.put("pods", make_pod("whole", gpus=1))  # events come in order: "odd" is judged by then
    await eventually(lambda: ledger.version > 0 and len(ledger) == 1 + (gpus > 0))
    assert _gpus(ledger, model) == 1 + gpus


async def test_a_watch_hung_open_is_reopened_and_catches_up(
    kube: Any, make_pod: Any, eventually: Any, api: Any, kube_config: Any
) -> None:
    """A watch connection that stays open but delivers nothing (a dead peer behind a load
    balancer) must not pass for a quiet one: after ``watch_idle_timeout`` of silence it is
    reopened from its resourceVersion, and the pod it missed arrives without a new list."""
    config = msgspec.structs.replace(kube_config, watch_idle_timeout=0.3)
    model = QuotaModel(parse({"quota": QUOTA}).quota)
    ledger = Ledger(60.0)
    watch = PodWatch(api, config, model, ledger)
    await watch.start()
    try:
        assert await watch.wait_ready(10)
        kube.put("pods", make_pod("a", gpus=1))
        await eventually(lambda: _gpus(ledger, model) == 1)
        kube.hang_watches()
        kube.put("pods", make_pod("b", gpus=2))  # never sent on the hung stream
        await eventually(lambda: _gpus(ledger, model) == 3)
        assert watch.reflector.quiet_reopens >= 1
        assert watch.reflector.lists == 1
        assert watch.reflector.stale_for() == 0
    finally:
        await watch.close()


async def test_a_watch_hung_open_with_the_server_wedged_counts_as_stale_from_its_last_word(
    kube: Any, make_pod: Any, eventually: Any, api: Any, kube_config: Any
) -> None:
    """Hung open, and the server takes connections but answers nothing: the reopened watch
    times out, and staleness counts from the last word heard (the moment usage stopped being
    known), not from when the failure was noticed, so ``quota.max_staleness`` is kept."""
    config = msgspec.structs.replace(kube_config, watch_idle_timeout=0.3, request_timeout=0.3)
    watch = PodWatch(api, config, QuotaModel(parse({"quota": QUOTA}).quota), Ledger(60.0))
    await watch.start()
    try:
        assert await watch.wait_ready(10)
        await eventually(lambda: watch.reflector.watches == 1)
        kube.hang_watches()
        kube.stalled = True
        heard = watch.reflector.last_heard
        await eventually(lambda: watch.reflector.last_error is not None)
        assert "timed out" in watch.reflector.last_error.lower()
        assert watch.reflector.last_heard == heard
        assert watch.reflector.stale_for() >= 0.3  # the idle timeout went by before the error
        kube.stalled = False
        await eventually(lambda: watch.reflector.stale_for() == 0)
    finally:
        kube.stalled = False
        await watch.close()
