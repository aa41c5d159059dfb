"""What an UPDATE changed, and which checks must judge it again (used by ``checks.pipeline``).

Each check declares what it reads, as ``reads`` (a set of the parts below), or decides itself
with ``significant_update(update)`` (Pod Security follows Pod Security Admission's rule). A check
that declares nothing reads everything, so a new check is never skipped by accident.

- ``spec``: the pod specs (every field of every template);
- ``metadata``: labels and annotations of the object and of its pod templates;
- ``object``: the whole object, bookkeeping metadata aside (resourceVersion, managedFields, ...),
  which changes on every write and must not force a re-judgement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from webhook.core.workloads import PodSpecRef

Part = Literal["spec", "metadata", "object"]
EVERYTHING: frozenset[Part] = frozenset({"object"})
_BOOKKEEPING = frozenset({"resourceVersion", "managedFields", "generation", "creationTimestamp", "selfLink", "uid"})
_JUDGED_METADATA = ("labels", "annotations")


@dataclass(slots=True)
class Update:
    """One UPDATE: the object before and after, with their pod specs; answers are computed once."""

    kind: str
    new_pods: Sequence[PodSpecRef]
    old_pods: Sequence[PodSpecRef]
    new_object: Mapping[str, Any]
    old_object: Mapping[str, Any]
    _answers: dict[Part, bool] = field(default_factory=dict)

    def changed(self, part: Part) -> bool:
        """Whether ``part`` differs between the old and the new object."""
        answer = self._answers.get(part)
        if answer is None:
            answer = self._answers[part] = _DIFF[part](self)
        return answer


def must_judge(check: object, update: Update) -> bool:
    """Whether ``check`` must judge ``update`` again (by its own rule, or by what it reads).

    Objects nested too deeply for Python's comparison (orjson reads 1024 levels, ``==`` gives up
    near 1000) count as changed: judged like the same object on CREATE, never an internal error.
    """
    try:
        significant = getattr(check, "significant_update", None)
        if significant is not None:
            return bool(significant(update))
        reads: frozenset[Part] = getattr(check, "reads", EVERYTHING)
        return any(update.changed(part) for part in reads)
    except RecursionError:
        return True


def _spec(update: Update) -> bool:
    new, old = update.new_pods, update.old_pods
    return len(new) != len(old) or any(a.spec != b.spec for a, b in zip(new, old, strict=True))


def _metadata(update: Update) -> bool:
    new, old = update.new_pods, update.old_pods
    if len(new) != len(old):
        return True
    pairs = [(_meta(update.new_object), _meta(update.old_object))]
    pairs += [(a.metadata, b.metadata) for a, b in zip(new, old, strict=True)]
    return any(a.get(k) != b.get(k) for a, b in pairs for k in _JUDGED_METADATA)


def _object(update: Update) -> bool:
    new, old = update.new_object, update.old_object
    if new.keys() != old.keys():
        return True
    for key, value in new.items():
        if key == "metadata" and isinstance(value, Mapping) and isinstance(old[key], Mapping):
            if _without_bookkeeping(value) != _without_bookkeeping(old[key]):
                return True
        elif value != old[key]:
            return True
    return False


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _without_bookkeeping(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metadata.items() if k not in _BOOKKEEPING}


_DIFF = {"spec": _spec, "metadata": _metadata, "object": _object}
