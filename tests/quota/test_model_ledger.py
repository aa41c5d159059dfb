"""The quota model (weights, which quotas a pod charges) and the ledger (used, reserved, TTL)."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.config import parse
from webhook.config.quota import QuotaConfig
from webhook.errors import ConfigError
from webhook.quota.ledger import Ledger, PodRecord
from webhook.quota.model import QuotaModel, gpu_models


def _model(**quota: Any) -> QuotaModel:
    return QuotaModel(parse({"quota": quota}).quota)


def _spec(resources: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"containers": [{"name": "m", "resources": {"limits": resources, "requests": resources}}], **extra}


def test_seven_mig_slices_weigh_exactly_one_gpu() -> None:
    model = _model(quotas=[{"name": "all", "limit": 1}])
    demand = model.demand(_spec({"nvidia.com/mig-1g.10gb": 7}))
    assert model.total(demand) == model.scale
    assert model.gpus(model.total(model.demand(_spec({"nvidia.com/mig-1g.10gb": 1})))) == "1/7"
    assert model.gpus(model.total(model.demand(_spec({"nvidia.com/mig-3g.40gb": 2})))) == "6/7"
    assert model.gpus(model.scale * 1234567 + model.scale // 2) == "1234567.5"


def test_time_sliced_replica_weighs_one_over_n_and_unknown_resources_do_not_count() -> None:
    model = _model(resources={"nvidia.com/gpu": 1, "nvidia.com/gpu.shared": "1/4"}, quotas=[{"name": "a", "limit": 2}])
    demand = model.demand(_spec({"nvidia.com/gpu.shared": 2, "example.com/fpga": 1, "cpu": "2"}))
    assert model.gpus(model.total(demand)) == "0.5"
    assert model.demand(_spec({"cpu": "1"})).empty


def test_charges_follow_namespace_team_model_and_per_rules() -> None:
    model = _model(
        quotas=[
            {"name": "ml-ns", "namespace": "ml", "limit": 4},
            {"name": "vision", "team": "vision", "limit": 8},
            {"name": "a100", "gpu_model": "A100", "limit": 2},
            {"name": "each-ns", "per": "namespace", "limit": 3},
            {"name": "each-team", "per": "team", "limit": 6},
            {"name": "mig-only", "resources": ["nvidia.com/mig-1g.10gb"], "limit": 1},
        ]
    )
    demand = model.demand(_spec({"nvidia.com/gpu": 1}, nodeSelector={"nvidia.com/gpu.product": "A100"}))
    keys = [c.key for c in model.charges("ml", {"team": "vision"}, demand)]
    assert keys == ["ml-ns", "vision", "a100", "each-ns/namespace=ml", "each-team/team=vision"]
    keys = [c.key for c in model.charges("web", {}, model.demand(_spec({"nvidia.com/gpu": 1})))]
    assert keys == ["each-ns/namespace=web"]


def test_gpu_model_comes_from_selector_and_required_affinity() -> None:
    label = "nvidia.com/gpu.product"
    term = {"matchExpressions": [{"key": label, "operator": "In", "values": ["A100", "H100"]}]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}
    assert gpu_models({"affinity": affinity}, label) == {"A100", "H100"}
    assert gpu_models({"affinity": affinity, "nodeSelector": {label: "H100"}}, label) == {"H100"}
    loose = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term, {}]}}}
    assert gpu_models({"affinity": loose}, label) is None
    assert gpu_models({}, label) is None


def test_bad_quota_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"quota.quotas\[0\].*limit"):
        parse({"quota": {"quotas": [{"name": "a", "limit": "lots"}]}})
    with pytest.raises(ConfigError, match="unique"):
        parse({"quota": {"quotas": [{"name": "a", "limit": 1}, {"name": "a", "limit": 2}]}})
    with pytest.raises(ConfigError, match=r"unknown key `quota\.quotas\[0\]\.limmit` \(allowed: gpu_model, limit"):
        parse({"quota": {"quotas": [{"name": "a", "limmit": 1}]}})


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _setup() -> tuple[QuotaModel, Ledger, _Clock]:
    model = QuotaModel(QuotaConfig(quotas=parse({"quota": {"quotas": [{"name": "q", "limit": 2}]}}).quota.quotas))
    clock = _Clock()
    return model, Ledger(30.0, clock), clock


def test_reservation_holds_until_the_watch_sees_the_pod() -> None:
    model, ledger, _ = _setup()
    charges = model.charges("ml", {}, model.demand(_spec({"nvidia.com/gpu": 2})))
    ok, views = ledger.admit(("uid-1", "ml/a"), charges, reserve=True)
    assert ok
    assert views[0].asked == 2 * model.scale
    assert not ledger.admit(("uid-2", "ml/b"), charges, reserve=True)[0]
    demand = model.demand(_spec({"nvidia.com/gpu": 2}))
    ledger.upsert("uid-1", PodRecord("ml", "a", demand, charges))
    assert ledger.reserved == {}
    assert ledger.used == {"q": 2 * model.scale}
    ledger.remove("uid-1")
    assert ledger.used == {}
    assert ledger.admit(("uid-2", "ml/b"), charges, reserve=False)[0]


def test_reservation_expires_after_its_ttl_and_dry_run_reserves_nothing() -> None:
    model, ledger, clock = _setup()
    charges = model.charges("ml", {}, model.demand(_spec({"nvidia.com/gpu": 1})))
    assert ledger.admit(("ml/a",), charges, reserve=False)[0]
    assert ledger.reserved == {}
    assert ledger.admit(("ml/a",), charges, reserve=True)[0]
    assert ledger.admit(("ml/b",), charges, reserve=True)[0]
    assert not ledger.admit(("ml/c",), charges, reserve=True)[0]
    clock.now += 31
    assert ledger.admit(("ml/c",), charges, reserve=True)[0]
    assert ledger.reserved == {"q": model.scale}


def test_same_pod_admitted_twice_holds_one_reservation() -> None:
    model, ledger, _ = _setup()
    charges = model.charges("ml", {}, model.demand(_spec({"nvidia.com/gpu": 1})))
    ledger.admit(("uid-1", "ml/a"), charges, reserve=True)
    ledger.admit(("uid-1", "ml/a"), charges, reserve=True)
    assert ledger.reserved == {"q": model.scale}


def test_two_pods_of_one_name_keep_separate_reservations() -> None:
    """A second CREATE of "ml/a" (another uid; etcd refuses it after admission) neither replaces
    nor releases the reservation of the pod holding the name; the watch ends each by its uid."""
    model, ledger, _ = _setup()
    charges = model.charges("ml", {}, model.demand(_spec({"nvidia.com/gpu": 1})))
    assert ledger.admit(("uid-1", "ml/a"), charges, reserve=True)[0]
    assert ledger.admit(("uid-2", "ml/a"), charges, reserve=True)[0]
    ledger.release(("uid-2", "ml/a"))
    assert ledger.reserved == {"q": model.scale}
    ledger.upsert("uid-1", PodRecord("ml", "a", model.demand(_spec({"nvidia.com/gpu": 1})), charges))
    assert ledger.reserved == {}
    assert ledger.used == {"q": model.scale}
