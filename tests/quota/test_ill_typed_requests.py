"""Quantities at the edges of apimachinery's range, and GPU fields of the wrong JSON type: each is
a clear ``QuantityError`` / a gpu violation naming the field, never a crash or a hang."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from webhook.checks import gpu
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.services import Services
from webhook.config import parse
from webhook.core.deadline import Deadline
from webhook.quota import model, quantity, requests

GPU = "nvidia.com/gpu"
LABEL = "nvidia.com/gpu.product"


def counts(name: str) -> bool:
    return name == GPU


# -- quantity limits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-999999999", Fraction(1, 10**9)),  # below 1n: rounded up to 1n, as ParseQuantity does
        ("-1e-2147483648", Fraction(-1, 10**9)),
        ("1.5n", Fraction(2, 10**9)),  # rounded up to the nano
        ("0e2147483647", Fraction(0)),
        ("9223372036854775807", Fraction(2**63 - 1)),
        ("7Ei", Fraction(7 * 2**60)),
        ("0." + "0" * 5000 + "1e5001", Fraction(1)),  # long digit strings never hit int()'s limit
        ("1" + "0" * 5000 + "e-5000", Fraction(1)),
        ("0." + "1" * 6000 + "Ki", Fraction(113777777778, 10**9)),
    ],
)
def test_edge_quantities_parse_like_apimachinery(text: str, value: Fraction) -> None:
    assert quantity.parse(text) == value


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1e999999999", "too large"),
        ("1e2147483647", "too large"),
        ("9223372036854775808", "too large"),
        ("8Ei", "too large"),
        ("1e2147483648", "exponent out of range"),  # apimachinery keeps the scale in an int32
        ("1e-2147483649", "exponent out of range"),
        ("1e99999999999999999999", "exponent out of range"),
        ("inf", "not valid"),
        ("\u0661", "not valid"),  # a non-ASCII digit
    ],
)
def test_unrepresentable_quantities_are_a_clear_error(text: str, why: str) -> None:
    with pytest.raises(quantity.QuantityError, match=why):
        quantity.milli(text)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300, 10**30])
def test_yaml_numbers_out_of_range_are_a_clear_error(value: Any) -> None:
    with pytest.raises(quantity.QuantityError):
        quantity.milli(value)


# -- ill-typed fields --------------------------------------------------------------------------


def _container(resources: Any) -> dict[str, Any]:
    return {"name": "app", "image": "x", "resources": resources}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"overhead": [1]}, "overhead"),
        ({"containers": [_container([1])]}, "containers[0].resources"),
        ({"containers": [_container({"requests": [1]})]}, "containers[0].resources.requests"),
        ({"containers": [_container({"limits": "1"})]}, "containers[0].resources.limits"),
        (
            {"initContainers": [_container({"limits": {GPU: "abc"}})]},
            "initContainers[0].resources.limits[nvidia.com/gpu]",
        ),
        (
            {"containers": [_container({"requests": {GPU: "1"}, "limits": {GPU: [1]}})]},
            "containers[0].resources.limits[nvidia.com/gpu]",
        ),
        ({"containers": "x"}, "containers"),
        ({"containers": [1]}, "containers[0]"),
        ({"overhead": {GPU: True}}, "overhead[nvidia.com/gpu]"),
    ],
)
def test_ill_typed_request_fields_raise_a_field_error_naming_them(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(requests.FieldError) as raised:
        requests.pod_requests(spec, counts)
    assert raised.value.field == field


def test_mismatches_name_an_invalid_limit() -> None:
    spec = {"containers": [_container({"requests": {GPU: "1"}, "limits": {GPU: "abc"}})]}
    with pytest.raises(requests.FieldError, match=r"containers\[0\].resources.limits\[nvidia.com/gpu\]"):
        list(requests.mismatches(spec, counts))


_TERMS = "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"


def _terms(terms: Any) -> dict[str, Any]:
    return {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}
    }


_IN_A100 = {"key": LABEL, "operator": "In", "values": "A100"}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"nodeSelector": LABEL}, "nodeSelector"),
        ({"nodeSelector": {LABEL: ["A100"]}}, f"nodeSelector[{LABEL}]"),
        ({"affinity": [1]}, "affinity"),
        ({"affinity": {"nodeAffinity": "x"}}, "affinity.nodeAffinity"),
        (_terms({}), _TERMS),
        (_terms([{"matchExpressions": True}]), f"{_TERMS}[0].matchExpressions"),
        (_terms([{"matchExpressions": [_IN_A100]}]), f"{_TERMS}[0].matchExpressions[0].values"),
    ],
)
def test_ill_typed_model_fields_raise_a_field_error_naming_them(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(requests.FieldError) as raised:
        model.gpu_models(spec, LABEL)
    assert raised.value.field == field


def test_non_string_resource_names_never_count_as_gpus() -> None:
    quota = model.QuotaModel(parse({"quota": {"per_pod": {"max_gpus": 1}}}).quota)
    assert quota.demand({"containers": [_container({"limits": {1: 2}})]}).empty


# -- the gpu check: a violation naming the field -----------------------------------------------


def _pod(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"containers": [_container({"requests": {GPU: "1"}, "limits": {GPU: "abc"}})]},
            "spec.containers[0].resources.limits[nvidia.com/gpu]: quantity 'abc' is not valid",
        ),
        (
            {"containers": [_container({"limits": [1]})]},
            "spec.containers[0].resources.limits: must be an object of quantities",
        ),
        ({"containers": [_container({"limits": {GPU: "1e999999999"}})]}, "is too large"),
        (
            {"containers": [_container({"limits": {GPU: 1}})], "nodeSelector": "x"},
            "spec.nodeSelector: must be an object",
        ),
    ],
)
async def test_the_gpu_check_denies_an_unreadable_pod_naming_the_field(spec: dict[str, Any], message: str) -> None:
    config = parse({"quota": {"per_pod": {"max_gpus": 4, "requests_equal_limits": True}}})
    check = gpu.build(config, Services(ci=True))
    assert check is not None
    outcome = await Pipeline(config, [check]).evaluate(
        Subject("CREATE", "Pod", "default", "p", _pod(spec)), Deadline.after(30)
    )
    assert not outcome.verdict.allowed
    texts = [f.violation.message for f in outcome.verdict.findings]
    assert any(message in t for t in texts), texts
    assert not any("internal error" in t for t in texts)
