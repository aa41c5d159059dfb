"""Quantities parsed like ``resource.Quantity`` and pod requests summed like kube-scheduler."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.quota import quantity, requests


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Fraction(1)),
        ("500m", Fraction(1, 2)),
        ("2Ki", Fraction(2048)),
        ("1Mi", Fraction(2**20)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("1E", Fraction(10**18)),
        ("1.5", Fraction(3, 2)),
        (".5", Fraction(1, 2)),
        ("+2", Fraction(2)),
        ("1.5k", Fraction(1500)),
        ("100n", Fraction(1, 10**7)),
        ("2e-3", Fraction(1, 500)),
        (3, Fraction(3)),
        (0.25, Fraction(1, 4)),
    ],
)
def test_quantity_parses_like_kubernetes(text: Any, value: Fraction) -> None:
    assert quantity.parse(text) == value


@pytest.mark.parametrize("text", ["", "1x", " 1", "1 ", "Ki", "1.2.3", "1e", "--1", "1Kii"])
def test_invalid_quantity_is_an_input_error_naming_it(text: str) -> None:
    with pytest.raises(quantity.QuantityError, match="quantity"):
        quantity.parse(text)


def test_milli_value_rounds_up_like_milli_value() -> None:
    assert quantity.milli("1n") == 1
    assert quantity.milli("1") == 1000
    assert quantity.milli("250m") == 250
    assert quantity.milli(2) == 2000


def _c(gpus: int | None, *, name: str = "c", always: bool = False, limit_only: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": "x"}
    if gpus is not None:
        res = {"limits": {"nvidia.com/gpu": gpus}}
        if not limit_only:
            res["requests"] = {"nvidia.com/gpu": gpus}
        container["resources"] = res
    if always:
        container["restartPolicy"] = "Always"
    return container


def _gpus(spec: dict[str, Any]) -> int:
    return requests.pod_requests(spec, lambda r: r == "nvidia.com/gpu").get("nvidia.com/gpu", 0) // 1000


def test_regular_containers_add_up() -> None:
    assert _gpus({"containers": [_c(1), _c(2), _c(None)]}) == 3


def test_largest_init_container_wins_when_larger_than_the_sum() -> None:
    assert _gpus({"initContainers": [_c(4), _c(2)], "containers": [_c(1), _c(1)]}) == 4
    assert _gpus({"initContainers": [_c(1)], "containers": [_c(2), _c(1)]}) == 3


def test_init_container_after_a_sidecar_runs_beside_it() -> None:
    # sidecar (1) then init (2): while the init runs, the sidecar holds its GPU too: 3
    spec = {"initContainers": [_c(1, always=True), _c(2)], "containers": [_c(1)]}
    assert _gpus(spec) == 3


def test_init_container_before_a_sidecar_does_not_add_to_it() -> None:
    # init (2) then sidecar (1): peak during init is 2; steady state is sidecar + main = 2
    spec = {"initContainers": [_c(2), _c(1, always=True)], "containers": [_c(1)]}
    assert _gpus(spec) == 2


def test_sidecars_count_with_regular_containers() -> None:
    spec = {"initContainers": [_c(1, always=True), _c(1, always=True)], "containers": [_c(2)]}
    assert _gpus(spec) == 4


def test_kep_753_example_arithmetic() -> None:
    # KEP-753: init1 (1), sidecar1 (2), init2 (3), sidecar2 (1), containers 2: init peak 2+3=5,
    # steady 2+1+2=5; bump init2 to 4 → 6 wins
    spec = {"initContainers": [_c(1), _c(2, always=True), _c(4), _c(1, always=True)], "containers": [_c(2)]}
    assert _gpus(spec) == 6


def test_overhead_is_added_and_limits_default_requests() -> None:
    spec = {"containers": [_c(2, limit_only=True)], "overhead": {"nvidia.com/gpu": "1"}}
    assert _gpus(spec) == 3


def test_mismatched_request_and_limit_is_reported() -> None:
    spec = {
        "containers": [
            {"name": "a", "resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}},
            {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": 1}}},
            {"name": "c", "resources": {"requests": {"nvidia.com/gpu": 1}}},
        ]
    }
    found = list(requests.mismatches(spec, lambda r: r == "nvidia.com/gpu"))
    assert [(m.name, m.request, m.limit) for m in found] == [("a", "1", "2"), ("c", "1", "None")]


def _reference(spec: dict[str, Any]) -> int:
    """resourcehelper.PodRequests for one resource, step by step as upstream writes it."""

    def req(c: dict[str, Any]) -> int:
        res = c.get("resources") or {}
        value = (res.get("requests") or {}).get("nvidia.com/gpu", (res.get("limits") or {}).get("nvidia.com/gpu", 0))
        return int(value)

    total = sum(req(c) for c in spec.get("containers", []))
    restartable = peak = 0
    for c in spec.get("initContainers", []):
        if c.get("restartPolicy") == "Always":
            total += req(c)
            restartable += req(c)
            use = restartable
        else:
            use = req(c) + restartable
        peak = max(peak, use)
    return max(total, peak) + int((spec.get("overhead") or {}).get("nvidia.com/gpu", 0))


_containers = st.lists(
    st.builds(
        lambda g, always, limit_only: _c(g, always=always, limit_only=limit_only),
        st.one_of(st.none(), st.integers(0, 8)),
        st.booleans(),
        st.booleans(),
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(_containers, _containers, st.one_of(st.none(), st.integers(0, 2)))
def test_pod_requests_match_the_upstream_algorithm(init: list[Any], regular: list[Any], overhead: int | None) -> None:
    for c in regular:
        c.pop("restartPolicy", None)
    spec: dict[str, Any] = {"containers": regular, "initContainers": init}
    if overhead is not None:
        spec["overhead"] = {"nvidia.com/gpu": overhead}
    assert _gpus(spec) == _reference(spec)
