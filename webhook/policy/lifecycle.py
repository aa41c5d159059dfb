"""Compiled policies over time: reload when files change, keeping the last good version.
Used by ``policy.rego``, ``policy.gatekeeper`` and ``checks.rego`` (evaluation itself runs in
killable worker processes, ``policy.isolation``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from webhook import errors
from webhook.policy import modules

log = logging.getLogger("portcullis.policy")
T = TypeVar("T")


@dataclass(slots=True)
class LoadStatus:
    """What /readyz and operators see: which policies run and why the last reload failed."""

    loaded: bool = False
    policies: tuple[str, ...] = ()
    last_error: str | None = None
    reloads: int = 0


class _Loaded(Protocol):
    @property
    def policy_ids(self) -> tuple[str, ...]: ...


L = TypeVar("L", bound=_Loaded)


class Reloadable(Generic[L]):
    """Something compiled from files (a Rego bundle, Gatekeeper templates) that is recompiled
    when the files change, and keeps the last good version when the new one is broken."""

    def __init__(self, paths: Sequence[Path], load: Callable[[Sequence[Path]], L], suffixes: tuple[str, ...]):
        self.paths = tuple(paths)
        self._load = load
        self._suffixes = suffixes
        self.status = LoadStatus()
        self.current: L | None = None
        self._fingerprint: tuple[tuple[str, int, int], ...] | None = None

    def load(self) -> L:
        """Compile now; raise ``PolicyLoadError`` (start-up fails loudly on a broken policy)."""
        fp = fingerprint(self.paths, self._suffixes)
        loaded = self._load(self.paths)
        self._install(loaded, fp)
        return loaded

    def reload_if_changed(self) -> bool:
        """Recompile when a file changed; on error keep the last good version and record why."""
        fp = fingerprint(self.paths, self._suffixes)
        if fp == self._fingerprint:
            return False
        try:
            loaded = self._load(self.paths)
        except errors.PolicyLoadError as exc:
            if self.status.last_error != str(exc):
                log.error("policy reload failed, keeping the last good version: %s", exc)
            self.status.last_error = str(exc)
            self._fingerprint = fp
            return False
        self._install(loaded, fp)
        log.info("policies reloaded: %s", ", ".join(self.status.policies) or "none")
        return True

    def _install(self, loaded: L, fp: tuple[tuple[str, int, int], ...]) -> None:
        self.current = loaded  # one reference swap: a request in flight keeps the old version
        self._fingerprint = fp
        self.status.loaded = True
        self.status.policies = loaded.policy_ids
        self.status.last_error = None
        self.status.reloads += 1


def fingerprint(paths: Sequence[Path], suffixes: tuple[str, ...] = (".rego",)) -> tuple[tuple[str, int, int], ...]:
    """What changes when a policy file changes (path, size, mtime): cheap enough to poll."""
    out: list[tuple[str, int, int]] = []
    for root in paths:
        candidates = [root] if root.is_file() else modules.files_under(root, suffixes) if root.is_dir() else []
        for path in candidates:
            try:
                stat = path.stat()
            except OSError:
                continue
            out.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(out)
