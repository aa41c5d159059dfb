"""Build a ``kubernetes.client.ApiClient`` from ``kubernetes:`` config, and call it off the loop.

The official client is synchronous: every call here runs in a worker thread
(``asyncio.to_thread``) inside the request's deadline, and its failures become
``ApiServerError`` naming what was asked, so a check's failure mode can take over.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.client
import kubernetes.config
import urllib3

from webhook import errors
from webhook.config.kubernetes import KubernetesConfig
from webhook.core.deadline import Deadline

T = TypeVar("T")
_DEFAULT_KUBECONFIG = Path("~/.kube/config")


class ApiStatusError(errors.ApiServerError):
    """The API server answered with an error status (``status`` holds the HTTP code)."""

    def __init__(self, message: str, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def build(config: KubernetesConfig) -> kubernetes.client.ApiClient | None:
    """The API client ``config`` asks for, or None (mode ``off``, or ``auto`` with nothing found).

    Raises ``ConfigError`` when an explicit mode cannot be honoured (no kubeconfig, not in a pod).
    """
    if config.mode == "off":
        return None
    configuration = kubernetes.client.Configuration()
    mode = config.mode
    if mode == "auto" and config.api_url is None:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            mode = "incluster"
        elif _kubeconfig_path(config).is_file():
            mode = "kubeconfig"
        else:
            return None
    try:
        if mode == "incluster":
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        elif mode == "kubeconfig":
            path = _kubeconfig_path(config)
            if not path.is_file():
                raise errors.ConfigError(
                    f"kubernetes.kubeconfig: {path} does not exist (set kubernetes.kubeconfig or $KUBECONFIG)"
                )
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(path), context=config.context, client_configuration=configuration
            )
    except kubernetes.config.ConfigException as exc:
        raise errors.ConfigError(f"kubernetes.mode {mode}: cannot load the cluster config: {exc}") from exc
    if config.api_url is not None:
        configuration.host = config.api_url.rstrip("/")
    configuration.retries = 1  # one retry for a dropped keep-alive connection; deadlines do the rest
    return kubernetes.client.ApiClient(configuration)


def _kubeconfig_path(config: KubernetesConfig) -> Path:
    raw = config.kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(_DEFAULT_KUBECONFIG)
    return Path(raw).expanduser()


async def call(deadline: Deadline, what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one blocking client call in a thread within ``deadline``; errors become ``ApiServerError``."""
    return await deadline.run(asyncio.to_thread(guarded, what, func, *args, **kwargs), what)


def guarded(what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking client call, turning its failures into ``ApiServerError`` (for threads)."""
    try:
        return func(*args, **kwargs)
    except kubernetes.client.ApiException as exc:
        raise status_error(what, exc) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise errors.ApiServerError(f"{what}: API server unreachable: {_short(exc)}") from exc


def status_error(what: str, exc: kubernetes.client.ApiException) -> ApiStatusError:
    status = int(exc.status or 0)
    message = exc.reason or ""
    body = getattr(exc, "body", None)
    if body:
        try:
            decoded = json.loads(body)
            message = decoded.get("message") or message
        except (ValueError, AttributeError):
            pass
    return ApiStatusError(f"{what}: API server answered {status}: {message}", status, exc.reason or "")


def read_json(response: Any) -> Any:
    """The decoded body of a ``_preload_content=False`` response."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def _short(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)[:300]
