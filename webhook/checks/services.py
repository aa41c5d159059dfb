"""Shared outside resources handed to checks when they are built (API client, mode of use)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Services:
    """What the running process offers checks.

    ``kube_api`` is a ``kubernetes.client.ApiClient`` when an API server is reachable (in a
    cluster, or a test server), else ``None``. ``ci`` is true for ``portcullis check``: checks
    that need live cluster state (GPU usage, runtime class lookup) then judge only what the
    manifest itself shows and say so.
    """

    kube_api: Any | None = None
    ci: bool = False
    # Replay judges recorded admissions offline (``ci``) but must decide as the webhook did: pod
    # templates then follow ``privilege.workload_templates`` instead of CI's always-enforce.
    admission_semantics: bool = False
    # The namespace label directory (``webhook.kube.namespaces.NamespaceDirectory``) when an API
    # server is reachable; checks that need namespace labels subscribe to it.
    namespaces: Any | None = None
