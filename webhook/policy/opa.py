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
import orjson
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
            answer = await asyncio.wait_for(self._query(dict(document)), budget)
        except TimeoutError as exc:
            raise errors.OpaError(f"{where}: no answer within {budget * 1000:.0f} ms") from exc
        except aiohttp.ClientResponseError as exc:
            raise errors.OpaError(f"{where}: HTTP {exc.status} {exc.message}") from exc
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            raise errors.OpaError(f"{where}: {type(exc).__name__}: {exc}") from exc
        except _Refused as exc:
            raise errors.OpaError(f"{where}: {exc}") from None
        if not isinstance(answer, dict) or "result" not in answer:
            raise errors.OpaError(f"{where}: the document is undefined (is the policy bundle loaded in OPA?)")
        return interpret(answer["result"], self.path.replace("/", "."))

    async def _query(self, document: dict[str, Any]) -> Any:
        """``POST /v1/data/<path>`` through the client's pooled session (what ``query_rule``
        sends), without following redirects and reading at most ``MAX_ANSWER_BYTES``.

        Why not ``query_rule``: it follows redirects (a 307 re-posts the pod spec wherever it
        points, a 302 becomes a GET whose answer is taken as OPA's) and reads any body whole."""
        url = f"{self._client.root_url}/data/{self.path}"
        async with self._client._request("POST", url, json={"input": document}, allow_redirects=False) as response:
            if response.status >= 300:
                where = f" to {response.headers.get('Location', '?')!r:.200}" if 300 <= response.status < 400 else ""
                raise _Refused(f"HTTP {response.status} {response.reason or ''}{where}".rstrip())
            body = await _read_at_most(response.content, MAX_ANSWER_BYTES)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _Refused(f"the answer is not JSON ({exc})") from None


class _Refused(Exception):
    """An answer not taken (redirect, HTTP error, too large, not JSON): an ``OpaError``."""


# OPA's answer is a few findings per policy; a body beyond this is refused, not read into memory.
MAX_ANSWER_BYTES = 8 << 20


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(1 << 16):
        size += len(chunk)
        if size > limit:
            raise _Refused(f"the answer is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def interpret(document: Any, root: str) -> list[PolicyResult]:
    """Find every object holding ``deny``/``warn`` in OPA's answer; its dotted path is the policy id.
    Packages below a policy's package are policies too (``data.portcullis.deny`` and
    ``data.portcullis.gpu.deny``).

    An optional ``mode`` key next to them sets that policy's mode (OPA cannot send metadata).
    An answer naming no policy (OPA without the bundle, a path at a library package) and a
    policy nested too deep to read are errors, judged by the failure mode: never an allow.
    """
    results: list[PolicyResult] = []
    _walk(document, root, 0, results)
    if not results:
        policy = Policy(id=root, package=root, file="opa")
        got = "an object holding no `deny` or `warn`" if isinstance(document, dict) else type(document).__name__
        return [PolicyResult(policy, error=f"policy {root} (opa): expected policies under {root}, got {got}")]
    return results


def _walk(node: Any, path: str, depth: int, out: list[PolicyResult]) -> None:
    if not isinstance(node, dict):
        return
    if depth > _MAX_DEPTH:
        if _holds_policy(node):
            policy = Policy(id=path, package=path, file="opa")
            out.append(PolicyResult(policy, error=f"policy {path} (opa): nested deeper than {_MAX_DEPTH} packages"))
        return
    if "deny" in node or "warn" in node:
        mode = node.get("mode")
        policy = Policy(id=path, package=path, file="opa", mode=Mode(mode) if mode in _MODES else None)
        out.append(rego.result_of(policy, node.get("deny", []), node.get("warn", [])))
    for key in sorted(node):
        if key not in _OWN_KEYS:
            _walk(node[key], f"{path}.{key}", depth + 1, out)


def _holds_policy(node: Any) -> bool:
    """Whether ``node`` or an object below it holds ``deny``/``warn`` (iterative: no depth limit)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            if "deny" in current or "warn" in current:
                return True
            stack.extend(current.values())
    return False


_OWN_KEYS = frozenset({"deny", "warn", "mode"})


_MODES = {m.value for m in Mode}
