"""A pod spec read once into the few fields the Pod Security checks look at (decode stage).

Every check walks the same containers; building their field paths and security contexts once
per pod keeps the per-check cost to a handful of dict lookups. Values the apiserver would have
rejected (a security context that is not an object, say) read as absent: the verdict on such a
manifest is then the one for the fields that do make sense.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from webhook.core import workloads
from webhook.core.decision import Mode, Violation
from webhook.core.workloads import PodSpecRef

EMPTY: Mapping[str, Any] = {}


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is an object, else an empty one (absent, null or malformed).

    ``type(x) is dict`` first: decoded JSON is always a dict, and ``isinstance`` against the
    ``Mapping`` ABC costs several times more; other mappings still take the slow path.
    """
    if type(value) is dict:
        return value
    # absent fields (None) are the common other case; the ABC check is for other mappings
    return value if (value is not None and isinstance(value, Mapping)) else EMPTY


def items(value: Any) -> list[Any] | tuple[()]:
    """``value`` when it is a list, else an empty one."""
    return value if isinstance(value, list) else ()


def one_of(value: Any, allowed: frozenset[str]) -> bool:
    """``value`` is one of the ``allowed`` strings. A value of another JSON type (a list or an
    object would not even hash) is never allowed: PSA judges it like any value outside its set."""
    return isinstance(value, str) and value in allowed


class ContainerView(NamedTuple):
    """One container: its name (as PSA reports it), field path, raw object and security context.

    Named tuples, not frozen dataclasses: built for every container of every request, and a
    frozen dataclass's ``__init__`` costs several times more.
    """

    name: str
    path: str  # e.g. "spec.template.spec.containers[0]"
    field: str  # initContainers | containers | ephemeralContainers
    container: Mapping[str, Any]
    sc: Mapping[str, Any]  # securityContext, empty when unset


class PodView(NamedTuple):
    """A pod spec with its containers pre-walked; ``path`` is where the spec sits in the object."""

    path: str
    meta_path: str
    spec: Mapping[str, Any]
    annotations: Mapping[str, Any]
    sc: Mapping[str, Any]  # spec.securityContext, empty when unset
    containers: tuple[ContainerView, ...]
    windows: bool  # spec.os.name == "windows" (some restricted checks exempt such pods from v1.25)
    user_namespace: bool  # spec.hostUsers == false (some checks relax for such pods from v1.35)
    # (path, securityContext, container name or None): the pod's context first, then each container's
    contexts: tuple[tuple[str, Mapping[str, Any], str | None], ...]


# ``tuple.__new__`` builds a named tuple without its Python-level ``__new__`` (same object, the
# fields in declaration order): a view is built per pod and per container of every review.
_new = tuple.__new__


def view(pod: PodSpecRef) -> PodView:
    """Decode ``pod`` for the checks (never raises: malformed fields read as absent)."""
    spec = pod.spec
    pod_path = pod.path
    pod_sc = mapping(spec.get("securityContext"))
    containers: list[ContainerView] = []
    contexts: list[tuple[str, Mapping[str, Any], str | None]] = [(pod_path, pod_sc, None)]
    for field in workloads.CONTAINER_FIELDS:
        listed = spec.get(field)
        if not listed or not isinstance(listed, list):
            continue
        prefix = f"{pod_path}.{field}["
        for index, container in enumerate(listed):
            if not (type(container) is dict or isinstance(container, Mapping)):
                container = EMPTY
            name = container.get("name")
            if not (type(name) is str or isinstance(name, str)):
                name = f"{field}[{index}]"
            path = f"{prefix}{index}]"
            sc = container.get("securityContext")
            if not (type(sc) is dict or (sc is not None and isinstance(sc, Mapping))):
                sc = EMPTY
            containers.append(_new(ContainerView, (name, path, field, container, sc)))
            contexts.append((path, sc, name))
    return _new(
        PodView,
        (
            pod_path,
            pod_path.removesuffix("spec") + "metadata",
            spec,
            mapping(pod.metadata.get("annotations")),
            pod_sc,
            tuple(containers),
            mapping(spec.get("os")).get("name") == "windows",
            spec.get("hostUsers") is False,
            tuple(contexts),
        ),
    )


@dataclass(frozen=True, slots=True)
class Stamp:
    """What every finding of one evaluation carries: the standard judged against and the mode."""

    standard: str  # e.g. "baseline:v1.37", named in each message like PSA's 'violates PodSecurity'
    mode: Mode | None = None


def finding(stamp: Stamp, check: str, message: str, path: str, container: str | None = None) -> Violation:
    """A violation of ``check`` at ``path``; ``message`` says what is wrong and how to fix it."""
    return Violation(check, f"{message} [{stamp.standard}]", container, path, stamp.mode)


CheckFn = Callable[[PodView, Stamp], list[Violation]]


# Rule strictness of a check with a relaxed variant (Windows pods exempt, or user-namespaced pods
# allowed): a pod clean under the strict variant is clean under the relaxed one too.
RELAXED = 1
STRICT = 2


class Rule(NamedTuple):
    """What one check function asks of a pod it finds nothing in, for the one-pass screen
    (``pss.screen``): which requirement (a check id, or a variant of one) and its argument
    (``True``; an allowed-value set; a strictness; the required resource names)."""

    requirement: str
    arg: Any = True


# Weak keys: factories (``hardened.checks`` per config) make new functions, and a function that
# is gone needs no rule. Read only when a plan is compiled, never per review.
_RULES: weakref.WeakKeyDictionary[CheckFn, Rule] = weakref.WeakKeyDictionary()


def screened(requirement: str, arg: Any = True) -> Callable[[CheckFn], CheckFn]:
    """Declare the ``Rule`` a check function keeps (a decorator; returns the function itself)."""

    def register(fn: CheckFn) -> CheckFn:
        _RULES[fn] = Rule(requirement, arg)
        return fn

    return register


def rule_of(fn: CheckFn) -> Rule | None:
    """The rule ``fn`` declared, or None (a plan with such a function is never screened)."""
    return _RULES.get(fn)
