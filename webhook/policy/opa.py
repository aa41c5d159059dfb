"""Remote OPA: send the same input document to an OPA server's Data API
(``POST /v1/data/<opa_path>``) through opa-python-client's ``AsyncOpaClient``.

One aiohttp session (keep-alive connection pool) lives as long as the check; every call is
bounded by the smaller of the configured timeout and the request's deadline, and any failure
(refused, timed out, HTTP error, bad JSON, missing document) becomes ``OpaError`` so the rego
check's failure mode decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opa_client.opa_async import AsyncOpaClient

from webhook import errors
from webhook.core.deadline import Deadline
from webhook.core.decision import Mode
from webhook.policy import rego
from webhook.policy.rego import Policy, PolicyResult

_MAX_DEPTH = 8


class OpaEngine:
    """A remote OPA answering for every policy under one data path."""

    def __init__(self, url: str, path: str = "portcullis", *, timeout: float = 1.0, token: str | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.ConfigError(f"policy.opa_url {url!r} must be http(s)://host[:port]")
        self.url = url.rstrip("/")
        self.path = path.strip("/").replace(".", "/")
        self.timeout = timeout
        self._client = AsyncOpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 8181),
            ssl=parts.scheme == "https",
            token=token,
            retries=0,  # a retry would not fit in an admission deadline; the failure mode decides
            timeout=timeout,
        )
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._client._init_session()  # opens the pooled session (what __aenter__ does)
            self._started = True

    async def close(self) -> None:
        if self._started:
            await self._client.close_connection()
            self._started = False

    async def evaluate(self, document: Mapping[str, Any], deadline: Deadline) -> list[PolicyResult]:
        """Ask OPA; return one result per policy found under the data path.

        Raises ``OpaError`` (upstream trouble) or ``DeadlineExceeded``.
        """
        await self.start()
        where = f"OPA {self.url}/v1/data/{self.path}"
        budget = deadline.cap(self.timeout)
        if budget <= 0:
            raise errors.DeadlineExceeded(f"{where}: no time left in the request's budget")
        try:
            answer = await asyncio.wait_for(self._client.query_rule(dict(document), self.path), budget)
        except TimeoutError as exc:
            raise errors.OpaError(f"{where}: no answer within {budget * 1000:.0f} ms") from exc
        except aiohttp.ClientResponseError as exc:
            raise errors.OpaError(f"{where}: HTTP {exc.status} {exc.message}") from exc
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            raise errors.OpaError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(answer, dict) or "result" not in answer:
            raise errors.OpaError(f"{where}: the document is undefined (is the policy bundle loaded in OPA?)")
        return interpret(answer["result"], self.path.replace("/", "."))


def interpret(document: Any, root: str) -> list[PolicyResult]:
    """Find every object holding ``deny``/``warn`` in OPA's answer; its dotted path is the policy id.

    An optional ``mode`` key next to them sets that policy's mode (OPA cannot send metadata).
    """
    results: list[PolicyResult] = []
    _walk(document, root, 0, results)
    if not results and not isinstance(document, dict):
        policy = Policy(id=root, package=root, file="opa")
        return [PolicyResult(policy, error=f"policy {root} (opa): expected an object, got {type(document).__name__}")]
    return results


def _walk(node: Any, path: str, depth: int, out: list[PolicyResult]) -> None:
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return
    if "deny" in node or "warn" in node:
        mode = node.get("mode")
        policy = Policy(id=path, package=path, file="opa", mode=Mode(mode) if mode in _MODES else None)
        out.append(rego.result_of(policy, node.get("deny", []), node.get("warn", [])))
        return
    for key in sorted(node):
        _walk(node[key], f"{path}.{key}", depth + 1, out)


_MODES = {m.value for m in Mode}
