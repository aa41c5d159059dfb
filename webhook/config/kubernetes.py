"""Config of the Kubernetes API connection (``kubernetes:``), used by ``webhook.kube``."""

from __future__ import annotations

from typing import Literal

from webhook.config.base import Section


class KubernetesConfig(Section, frozen=True):
    """How Portcullis reaches the Kubernetes API server.

    ``auto`` uses the in-cluster service account when running in a pod, else the kubeconfig
    (``kubeconfig`` or ``$KUBECONFIG`` or ``~/.kube/config``) when one exists, else no API.
    ``api_url`` overrides the server address (tests point it at a local server).
    """

    mode: Literal["auto", "incluster", "kubeconfig", "off"] = "auto"
    kubeconfig: str | None = None
    context: str | None = None
    api_url: str | None = None
    # Seconds for one API call (connect + read); watches use their own longer read timeout.
    request_timeout: float = 5.0
    # Server-side timeout of one watch request; the watch then resumes from its resourceVersion.
    watch_timeout: int = 300
    # A watch that delivers nothing (no event, no BOOKMARK) for this long is reopened from its
    # resourceVersion: a connection that hangs open (a dead peer behind a load balancer) then
    # passes for a quiet one this long at most, and what it missed is delivered on reopening.
    watch_idle_timeout: float = 20.0
    # Items per page when listing (the continue token pages through large clusters).
    list_page_size: int = 500
    # Backoff between reconnects after an error (seconds, doubling up to the max).
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if min(self.request_timeout, self.watch_timeout, self.watch_idle_timeout, self.list_page_size) <= 0:
            raise ValueError(
                "kubernetes.request_timeout, watch_timeout, watch_idle_timeout and list_page_size must be positive"
            )
        if self.backoff_initial <= 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("kubernetes.backoff_initial must be positive and at most backoff_max")
