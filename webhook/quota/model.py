"""The quota model compiled from ``quota:`` config: which quotas a pod charges, and how much.

All amounts are integers in one unit chosen so that every weight and limit is exact
(1 GPU = ``scale`` units, ``scale`` = 1000 x the lcm of the weights' denominators), so a check
is a few integer additions and comparisons, never float drift (7 x 1/7 GPU is exactly 1 GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, NamedTuple

from webhook import shapes
from webhook.config.quota import QuotaConfig, QuotaRule, parse_amount
from webhook.quota import requests


class Demand(NamedTuple):
    """What one pod asks: weighted units per counted resource, and the GPU models it may land on
    (``None`` when it does not constrain the model)."""

    units: Mapping[str, int]
    models: frozenset[str] | None
    milli: Mapping[str, int]

    @property
    def empty(self) -> bool:
        return not self.units


class Charge(NamedTuple):
    """One quota a pod draws on: the quota's key, the pod's amount, the quota's limit.

    A NamedTuple, not a frozen dataclass: a check builds several per request (hot path).
    """

    key: str
    rule: str
    scope: str  # human words: "namespace ml", "team vision", "gpu model A100", "all pods"
    units: int
    limit: int


class QuotaModel:
    """Config compiled for the hot path. Pure: no I/O, no clock."""

    def __init__(self, config: QuotaConfig) -> None:
        self.config = config
        weights: dict[str, Fraction] = {}
        for name in config.resources:
            weight = config.weight(name)
            if weight is not None:
                weights[name] = weight
        denominators = [w.denominator for w in weights.values()]
        denominators += [parse_amount(q.limit, q.name).denominator for q in config.quotas]
        if config.per_pod.max_gpus is not None:
            denominators.append(parse_amount(config.per_pod.max_gpus, "max_gpus").denominator)
        denominators.append(config.mig_slices)  # any MIG profile weighs <g>/<slices>
        self._lcm = math.lcm(*denominators) if denominators else 1
        self.scale = 1000 * self._lcm
        self._weights = weights
        self._factor: dict[str, int | None] = {}  # units per milli-unit of a resource (cache)
        self._limits = {q.name: int(parse_amount(q.limit, q.name) * self.scale) for q in config.quotas}
        self._rules = tuple(config.quotas)
        self._resource_sets = {q.name: frozenset(q.resources) for q in config.quotas if q.resources}
        self.has_model_quotas = any(q.gpu_model for q in config.quotas)
        max_gpus = config.per_pod.max_gpus
        self.max_pod_units = None if max_gpus is None else int(parse_amount(max_gpus, "max_gpus") * self.scale)
        # rule name, filters, static key and scope (None for per-namespace / per-team rules)
        self._compiled = tuple(
            (q, q.namespace, q.team, q.gpu_model, self._limits[q.name], self._resource_sets.get(q.name))
            + ((None, "") if q.per is not None else _key(q, "", None))
            for q in config.quotas
        )
        # counts(resource) -> bool, a C-level dict lookup once a name has been seen (hot path)
        self.counts: Callable[[str], bool] = _Counted(self).__getitem__

    def factor(self, resource: str) -> int | None:
        """Units per milli-unit of ``resource``; None when it is not a GPU resource."""
        factor = self._factor.get(resource)
        if factor is None and resource not in self._factor:
            if not isinstance(resource, str):  # a YAML key such as 1: never names a GPU resource
                weight = None
            else:
                weight = self._weights.get(resource) or self.config.weight(resource)
            factor = None if weight is None else int(weight * self._lcm)
            if len(self._factor) < 1024:  # bounded: resource names come from untrusted pods
                self._factor[resource] = factor
        return factor

    def unweighted(self, resource: str) -> bool:
        """Whether ``resource`` looks like an accelerator but has no weight (see ``QuotaConfig``)."""
        return isinstance(resource, str) and self.config.unweighted_accelerator(resource)

    def demand(self, spec: Mapping[str, Any], *, stored: bool = False) -> Demand:
        """What the pod asks, by the scheduler's arithmetic. Raises ``QuantityError``.

        ``stored``: a pod the API server holds, counted as what it gets (``requests.pod_requests``).
        """
        milli = requests.pod_requests(spec, self.counts, stored)
        if not milli:
            return _NO_DEMAND
        units = {name: m * (self.factor(name) or 0) for name, m in milli.items()}
        return Demand(units, gpu_models(spec, self.config.gpu_model_label), milli)

    def total(self, demand: Demand, resources: frozenset[str] | None = None) -> int:
        if resources is None:
            return sum(demand.units.values())
        return sum(u for name, u in demand.units.items() if name in resources)

    def charges(self, namespace: str, labels: Mapping[str, str], demand: Demand) -> tuple[Charge, ...]:
        """Every quota the pod draws on, with its amount (quotas it asks nothing of are left out)."""
        if demand.empty:
            return ()
        team = labels.get(self.config.team_label)
        models = demand.models
        everything = sum(demand.units.values())
        out: list[Charge] = []
        for rule, rule_ns, rule_team, rule_model, limit, resources, key, scope in self._compiled:
            if rule_ns is not None and rule_ns != namespace:
                continue
            if rule_team is not None and rule_team != team:
                continue
            if rule_model is not None and (models is None or rule_model not in models):
                continue
            if key is None:
                key, scope = _key(rule, namespace, team)
                if key is None:
                    continue
            units = everything if resources is None else self.total(demand, resources)
            if units:
                out.append(Charge(key, rule.name, scope, units, limit))
        return tuple(out)

    def gpus(self, units: int) -> str:
        """Units as GPUs for people: "2", "0.5", "1/7" (exact)."""
        whole, rest = divmod(units, self.scale)
        if not rest:
            return str(whole)
        return format_gpus(Fraction(units, self.scale))


class _Counted(dict[str, bool]):
    """resource name -> counts as GPU; misses are computed once (bounded: names come from pods)."""

    def __init__(self, model: QuotaModel) -> None:
        super().__init__()
        self._model = model

    def __missing__(self, resource: str) -> bool:
        # weighted (a zero weight says "not a GPU"), or an accelerator nobody weighted: counted so
        # the check can refuse it, never left out for free
        factor = self._model.factor(resource)
        counted = bool(factor) or (factor is None and self._model.unweighted(resource))
        if len(self) < 1024:
            self[resource] = counted
        return counted


def format_gpus(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    thousandths = value * 1000
    if thousandths.denominator == 1:
        whole, frac = divmod(thousandths.numerator, 1000)
        return f"{whole}.{frac:03d}".rstrip("0")
    return f"{value.numerator}/{value.denominator}"


def _key(rule: QuotaRule, namespace: str, team: str | None) -> tuple[str | None, str]:
    if rule.per == "namespace":
        return f"{rule.name}/namespace={namespace}", f"namespace {namespace}"
    if rule.per == "team":
        if team is None:
            return None, ""
        return f"{rule.name}/team={team}", f"team {team}"
    parts = []
    if rule.namespace is not None:
        parts.append(f"namespace {rule.namespace}")
    if rule.team is not None:
        parts.append(f"team {rule.team}")
    if rule.gpu_model is not None:
        parts.append(f"gpu model {rule.gpu_model}")
    return rule.name, ", ".join(parts) or "all pods"


_REQUIRED = "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"


def gpu_models(spec: Mapping[str, Any], label: str) -> frozenset[str] | None:
    """GPU models the pod may run on, from its node selector and required node affinity
    (both must hold); ``None`` when neither constrains ``label``.

    Raises ``requests.FieldError`` (a ``QuantityError``) when a field read has the wrong type.
    """
    models: frozenset[str] | None = None
    selector = _object(spec.get("nodeSelector"), "nodeSelector", "must be an object of node labels")
    if label in selector:
        models = frozenset((_label_value(selector[label], f"nodeSelector[{label}]"),))
    affinity = _object(spec.get("affinity"), "affinity", "must be an object")
    node = _object(affinity.get("nodeAffinity"), "affinity.nodeAffinity", "must be an object")
    required = _object(node.get("requiredDuringSchedulingIgnoredDuringExecution"), _REQUIRED, "must be an object")
    terms = _list(required.get("nodeSelectorTerms"), f"{_REQUIRED}.nodeSelectorTerms")
    if terms:
        allowed: set[str] = set()
        for index, term in enumerate(terms):  # ORed: every term must pin the label for the pod to be pinned
            values = _term_values(term, label, f"{_REQUIRED}.nodeSelectorTerms[{index}]")
            if values is None:
                return models
            allowed |= values
        models = frozenset(allowed) if models is None else models & allowed
    return models


def _term_values(term: Any, label: str, where: str) -> set[str] | None:
    term = _object(term, where, "must be an object")
    values: set[str] | None = None
    for index, expr in enumerate(_list(term.get("matchExpressions"), f"{where}.matchExpressions")):
        at = f"{where}.matchExpressions[{index}]"
        expr = _object(expr, at, "must be an object")
        if expr.get("key") == label and expr.get("operator") == "In":
            listed = _list(expr.get("values"), f"{at}.values")
            found = {_label_value(v, f"{at}.values[{i}]") for i, v in enumerate(listed)}
            values = found if values is None else values & found
    return values


def _object(value: Any, where: str, problem: str) -> Mapping[str, Any]:
    """``value`` when it is an object, empty when unset; else ``FieldError`` naming ``where``."""
    return shapes.mapping(value, where, requests.FieldError, problem=problem)


def _list(value: Any, where: str) -> list[Any]:
    return shapes.array(value, where, requests.FieldError, problem="must be a list")


def _label_value(value: Any, where: str) -> str:
    """A label value as text (YAML may give a number); a list or an object is refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict) or value is None:
        raise requests.FieldError(where, "must be a string (a node label value)")
    return str(value)


_EMPTY: Mapping[str, Any] = {}
_NO_DEMAND = Demand({}, None, {})
