"""Pod specs out of every workload kind that carries one (decode stage of admission and CI).

Each pod spec is returned with its field path prefix so a violation can name the exact field
(``spec.template.spec.containers[0].securityContext.privileged``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from webhook import errors

# kind -> path (tuple of keys) from the object root to the pod template (metadata + spec).
# A Pod *is* its own template.
_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "PodTemplate": ("template",),
}

WORKLOAD_KINDS: frozenset[str] = frozenset(_TEMPLATE_PATHS)
CONTAINER_FIELDS: tuple[str, ...] = ("initContainers", "containers", "ephemeralContainers")


@dataclass(frozen=True, slots=True)
class PodSpecRef:
    """One pod spec inside a workload, as decoded JSON, with where it sits.

    The spec stays a mapping on purpose: checks read a handful of its many fields, and
    converting the whole spec into records would cost more than every check together.
    """

    spec: Mapping[str, Any]
    metadata: Mapping[str, Any]
    path: str  # e.g. "spec.template.spec"

    @property
    def labels(self) -> Mapping[str, str]:
        labels = self.metadata.get("labels")
        return labels if isinstance(labels, Mapping) else {}

    @property
    def annotations(self) -> Mapping[str, str]:
        annotations = self.metadata.get("annotations")
        return annotations if isinstance(annotations, Mapping) else {}


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """One container of a pod spec: which list it is in, its index, its field path."""

    field: str  # initContainers | containers | ephemeralContainers
    index: int
    container: Mapping[str, Any]
    path: str  # e.g. "spec.containers[0]"

    @property
    def name(self) -> str:
        name = self.container.get("name")
        return name if isinstance(name, str) else f"{self.field}[{self.index}]"


def carries_pod_spec(kind: str) -> bool:
    return kind in _TEMPLATE_PATHS


def pod_specs(obj: Mapping[str, Any], kind: str | None = None) -> list[PodSpecRef]:
    """Return the pod specs of a workload object (empty for kinds that carry none).

    ``kind`` is the authoritative kind (the review's ``request.kind``); by default the object's own.

    Raises ``ReviewError`` when the object claims a workload kind but its template is not an
    object, so a malformed workload is rejected rather than silently admitted.
    """
    if kind is None:
        kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _TEMPLATE_PATHS:
        return []
    # ``type(x) is dict`` before ``isinstance(x, Mapping)``: decoded JSON is always a dict, and the
    # ABC check costs several times more on this per-review path; other mappings take the slow one.
    template: Any = obj
    walked: list[str] = []
    for key in _TEMPLATE_PATHS[kind]:
        walked.append(key)
        template = template.get(key) if _is_mapping(template) else None
        if template is None:
            return []  # an object without a template has no pods to judge (e.g. a scale-only patch)
        if not _is_mapping(template):
            raise errors.ReviewError(f"{kind}: field {'.'.join(walked)} must be an object")
    spec = template.get("spec")
    if spec is None:
        return []
    path = ".".join([*walked, "spec"])
    if not _is_mapping(spec):
        raise errors.ReviewError(f"{kind}: field {path} must be an object")
    metadata = template.get("metadata") or {}
    if not _is_mapping(metadata):
        raise errors.ReviewError(f"{kind}: field {'.'.join([*walked, 'metadata'])} must be an object")
    _check_container_lists(kind, spec, path)
    return [PodSpecRef(spec, metadata, path)]


def _is_mapping(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)


def _check_container_lists(kind: str, spec: Mapping[str, Any], path: str) -> None:
    for field in CONTAINER_FIELDS:
        containers = spec.get(field)
        if containers is None:
            continue
        if not isinstance(containers, list):
            raise errors.ReviewError(f"{kind}: field {path}.{field} must be a list")
        for index, container in enumerate(containers):
            if type(container) is not dict and not isinstance(container, Mapping):
                raise errors.ReviewError(f"{kind}: field {path}.{field}[{index}] must be an object")


def containers(pod: PodSpecRef, fields: tuple[str, ...] = CONTAINER_FIELDS) -> Iterator[ContainerRef]:
    """Every container of the pod (init, regular, ephemeral), in that order."""
    spec = pod.spec
    for field in fields:
        for index, container in enumerate(spec.get(field) or ()):
            yield ContainerRef(field, index, container, f"{pod.path}.{field}[{index}]")


def object_name(obj: Any) -> str:
    """``metadata.name``, else ``metadata.generateName`` (pods of a ReplicaSet), else ""."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return ""
    value = meta.get("name") or meta.get("generateName")
    return value if isinstance(value, str) else ""
