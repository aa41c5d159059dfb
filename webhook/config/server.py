"""Config of the admission server: address, TLS, time budget, limits."""

from __future__ import annotations

from typing import Annotated

import msgspec

from webhook.config.base import Section


class ServerConfig(Section, frozen=True):
    listen: str = "0.0.0.0:8443"
    tls_cert: str | None = None
    tls_key: str | None = None
    # The apiserver's timeoutSeconds for this webhook; our own deadline is this minus the margin,
    # so we always answer (per failure mode) before the apiserver gives up on us.
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=30)] = 5.0
    margin_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 3 * 1024 * 1024
    # Requests handled at once; more are answered 429 at once (load shedding) rather than queued.
    max_in_flight: Annotated[int, msgspec.Meta(gt=0)] = 512
    cert_reload_interval: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # Shed load (429) while reviews wait longer than this in the event loop's queue before their
    # handler runs (default: a tenth of the request budget); also taken off each budget.
    max_queue_seconds: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # mTLS: a PEM bundle of the CAs that issue the apiserver's client certificate. When set, the
    # webhook port refuses clients without such a certificate, so no pod on the network can post
    # reviews (forging audit records, holding GPU reservations); probes and metrics then use
    # `health_listen`.
    client_ca: str | None = None
    # Plain-HTTP port for /healthz, /readyz and /metrics only (e.g. "0.0.0.0:8081"); required
    # with client_ca, since kubelet probes present no client certificate.
    health_listen: str | None = None

    def __post_init__(self) -> None:
        if self.client_ca and not self.health_listen:
            raise ValueError("server.client_ca needs server.health_listen (kubelet probes carry no client certificate)")

    @property
    def budget_seconds(self) -> float:
        return max(0.05, self.timeout_seconds - self.margin_seconds)
