"""A pod spec read once into the few fields the Pod Security checks look at (decode stage).

Every check walks the same containers; building their field paths and security contexts once
per pod keeps the per-check cost to a handful of dict lookups. Values the apiserver would have
rejected (a security context that is not an object, say) read as absent: the verdict on such a
manifest is then the one for the fields that do make sense.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook.admission import workloads
from webhook.admission.decision import Mode, Violation
from webhook.admission.workloads import PodSpecRef

EMPTY: Mapping[str, Any] = {}


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is an object, else an empty one (absent, null or malformed)."""
    return value if isinstance(value, Mapping) else EMPTY


def items(value: Any) -> list[Any] | tuple[()]:
    """``value`` when it is a list, else an empty one."""
    return value if isinstance(value, list) else ()


@dataclass(frozen=True, slots=True)
class ContainerView:
    """One container: its name (as PSA reports it), field path, raw object and security context."""

    name: str
    path: str  # e.g. "spec.template.spec.containers[0]"
    field: str  # initContainers | containers | ephemeralContainers
    container: Mapping[str, Any]
    sc: Mapping[str, Any]  # securityContext, empty when unset


@dataclass(frozen=True, slots=True)
class PodView:
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


def view(pod: PodSpecRef) -> PodView:
    """Decode ``pod`` for the checks (never raises: malformed fields read as absent)."""
    spec = pod.spec
    containers: list[ContainerView] = []
    for field in workloads.CONTAINER_FIELDS:
        for index, container in enumerate(items(spec.get(field))):
            container = mapping(container)
            name = container.get("name")
            path = f"{pod.path}.{field}[{index}]"
            containers.append(
                ContainerView(
                    name if isinstance(name, str) else f"{field}[{index}]",
                    path,
                    field,
                    container,
                    mapping(container.get("securityContext")),
                )
            )
    prefix = pod.path.removesuffix("spec")
    pod_sc = mapping(spec.get("securityContext"))
    contexts = ((pod.path, pod_sc, None), *((c.path, c.sc, c.name) for c in containers))
    return PodView(
        path=pod.path,
        meta_path=f"{prefix}metadata",
        spec=spec,
        annotations=mapping(pod.metadata.get("annotations")),
        sc=pod_sc,
        containers=tuple(containers),
        windows=mapping(spec.get("os")).get("name") == "windows",
        user_namespace=spec.get("hostUsers") is False,
        contexts=contexts,
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
