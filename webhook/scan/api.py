"""Raw REST calls for scans (I/O edge): paged lists and watches of any resource, and the
get / create / replace / delete with ``resourceVersion`` preconditions that leases and reports need.

Built on the official client's ``ApiClient`` (its auth, TLS and connection pool), without its
typed models: a scan reads tens of thousands of objects as plain JSON, and PolicyReports and
Leases are written as plain JSON. Blocking calls run in worker threads inside a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from webhook import errors
from webhook.config.kubernetes import KubernetesConfig
from webhook.core.deadline import Deadline
from webhook.kube import client as kube_client
from webhook.kube import reflector

_JSON = "application/json"
Object = dict[str, Any]


class Conflict(errors.ApiServerError):
    """409: the object changed since it was read (or already exists): read again and retry."""


class NotFound(errors.ApiServerError):
    """404: the object (or its namespace) does not exist."""


class RestApi:
    """JSON over the API server for one ``ApiClient``; every call within ``timeout`` seconds."""

    def __init__(self, api: kubernetes.client.ApiClient, timeout: float) -> None:
        self.api = api
        self.timeout = timeout

    @classmethod
    def build(cls, config: KubernetesConfig, connections: int = 32) -> RestApi:
        """A client of its own for a scan: one watch per listed kind holds a connection each, and
        the report writers need more; the official client's pool keeps 5 per CPU by default.
        Raises ``ConfigError`` when ``config`` names no API server."""
        api = kube_client.build(config)
        if api is None:
            raise errors.ConfigError("scans need a Kubernetes API server (kubernetes.mode, a kubeconfig, or in a pod)")
        api.configuration.connection_pool_maxsize = max(connections, api.configuration.connection_pool_maxsize or 0)
        api.rest_client = kubernetes.client.rest.RESTClientObject(api.configuration)  # unused so far: no leak
        return cls(api, config.request_timeout)

    def close(self) -> None:
        """Close the connection pool (blocking: call it in a thread)."""
        self.api.close()  # type: ignore[no-untyped-call]

    # -- blocking (worker threads) ---------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        *,
        stream: bool = False,
        timeout: Any = None,
    ) -> Any:
        """One call; the raw (streaming) response with ``stream``, else the decoded JSON body.

        Raises ``ApiException`` for a non-2xx answer (the caller maps it).
        """
        params = [(k, _param(v)) for k, v in (query or {}).items() if v is not None]
        headers = {"Accept": _JSON}
        if body is not None:
            headers["Content-Type"] = _JSON
        serialized = self.api.param_serialize(
            method, path, query_params=params, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self.api.call_api(*serialized, _request_timeout=timeout or self.timeout)
        if not 200 <= response.status <= 299:
            response.read()  # type: ignore[no-untyped-call]
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        if stream:
            return response.response
        data = response.read()  # type: ignore[no-untyped-call]
        return json.loads(data) if data else {}

    def lister(self, path: str) -> Callable[..., Any]:
        """A ``list_func`` for ``kube.reflector.Reflector`` over the collection at ``path``.

        The reflector calls it with the official client's keyword names (``limit``, ``_continue``,
        ``watch``, ``resource_version``, ...); they map to the API's query parameters here.
        """

        def list_func(_preload_content: bool = False, _request_timeout: Any = None, **kwargs: Any) -> Any:
            query = dict(reflector.list_query(kwargs))
            return self.request("GET", path, query, stream=True, timeout=_request_timeout)

        return list_func

    # -- async, mapped errors --------------------------------------------------------------
    async def call(self, what: str, method: str, path: str, body: Any = None, **query: Any) -> Object:
        deadline = Deadline.after(self.timeout * 2)
        try:
            result: Object = await kube_client.call(deadline, what, self._mapped, what, method, path, query, body)
        except errors.DeadlineExceeded as exc:
            raise errors.ApiServerError(str(exc)) from exc
        return result

    def _mapped(self, what: str, method: str, path: str, query: Mapping[str, Any], body: Any) -> Any:
        try:
            return self.request(method, path, query, body)
        except ApiException as exc:
            error = kube_client.status_error(what, exc)
            if exc.status == 409:
                raise Conflict(str(error)) from exc
            if exc.status == 404:
                raise NotFound(str(error)) from exc
            raise error from exc

    async def get(self, what: str, path: str) -> Object | None:
        """The object, or None when it does not exist."""
        try:
            return await self.call(what, "GET", path)
        except NotFound:
            return None

    async def create(self, what: str, collection: str, body: Object) -> Object:
        return await self.call(what, "POST", collection, body)

    async def replace(self, what: str, path: str, body: Object) -> Object:
        """PUT; ``body.metadata.resourceVersion`` makes it a compare-and-swap (409 when stale)."""
        return await self.call(what, "PUT", path, body)

    async def delete(self, what: str, path: str, resource_version: str) -> None:
        """DELETE only the version read (``preconditions.resourceVersion``); gone already is fine."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": resource_version}}
        try:
            await self.call(what, "DELETE", path, body)
        except NotFound:
            return


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
