"""Which pod UPDATEs Pod Security re-judges: Pod Security Admission's ``isSignificantPodUpdate``.

PSA re-evaluates an updated pod only when something it may not have seen at creation changed:
the pod's seccomp annotation, the number of containers or init containers, a container's or init
container's image or per-container seccomp annotation (compared by index), or an ephemeral
container added or changed (compared by name). Anything else (labels, other annotations,
tolerations, resources) leaves a running pod's standing as it was, so ``kubectl label`` works on
pods created before a stricter policy. Written from PSA's admission.go (pod-security-admission).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.core.workloads import PodSpecRef

_POD_SECCOMP = "seccomp.security.alpha.kubernetes.io/pod"
_CONTAINER_SECCOMP = "container.seccomp.security.alpha.kubernetes.io/"


def significant(new: PodSpecRef, old: PodSpecRef) -> bool:
    """Whether PSA would evaluate the update from ``old`` to ``new`` (one pod spec each)."""
    annotations, old_annotations = _mapping(new.metadata.get("annotations")), _mapping(old.metadata.get("annotations"))
    if annotations.get(_POD_SECCOMP) != old_annotations.get(_POD_SECCOMP):
        return True
    for field in ("containers", "initContainers"):
        listed, old_listed = _list(new.spec.get(field)), _list(old.spec.get(field))
        if len(listed) != len(old_listed):
            return True
        for container, old_container in zip(listed, old_listed, strict=True):
            if _container_changed(container, old_container, annotations, old_annotations):
                return True
    old_ephemeral = {_name(c): c for c in _list(old.spec.get("ephemeralContainers"))}
    for container in _list(new.spec.get("ephemeralContainers")):
        previous = old_ephemeral.get(_name(container))
        if previous is None:
            return True  # an ephemeral container added
        if _container_changed(container, previous, annotations, old_annotations):
            return True
    return False


def _container_changed(
    container: Mapping[str, Any],
    old: Mapping[str, Any],
    annotations: Mapping[str, Any],
    old_annotations: Mapping[str, Any],
) -> bool:
    if container.get("image") != old.get("image"):
        return True
    key = _CONTAINER_SECCOMP + _name(container)  # PSA keys both maps by the new container's name
    return annotations.get(key) != old_annotations.get(key)


def _name(container: Mapping[str, Any]) -> str:
    name = container.get("name")
    return name if isinstance(name, str) else ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Mapping[str, Any]]:
    # pod_specs has checked the container lists hold objects; anything else reads as empty
    return [c for c in value if isinstance(c, Mapping)] if isinstance(value, list) else []
