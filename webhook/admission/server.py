"""The admission webhook over HTTPS: /validate, /mutate, /healthz, /readyz, /metrics.

Decoding and judging are delegated (``review``, ``pipeline``); this module owns HTTP concerns:
body limits, the request's deadline (the apiserver's ``?timeout=`` or the configured one, less
a margin), load shedding, metrics, and recording each decision in the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any, Protocol

import orjson

from webhook import errors
from webhook.admission import http, review
from webhook.admission.metrics import WebhookMetrics
from webhook.admission.recorder import AuditUnavailable
from webhook.checks.pipeline import Outcome, Pipeline, Subject
from webhook.config.server import ServerConfig
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.core.decision import Verdict

log = logging.getLogger("portcullis.server")

# The checks whose results /mutate applies: image digest pinning.
_MUTATING_CHECKS = frozenset({"images"})
_TIMEOUT_PARAM = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")


class DecisionRecorder(Protocol):
    """Where decisions go (the audit log); ``record`` must not block the event loop."""

    async def record(
        self, endpoint: str, request: review.ReviewRequest, outcome: Outcome, *, deadline: Deadline | None = None
    ) -> None: ...


class WebhookServer:
    """Holds the per-process state the handlers share (no globals on the hot path)."""

    def __init__(
        self,
        settings: ServerConfig,
        pipeline: Pipeline,
        *,
        metrics: WebhookMetrics | None = None,
        recorder: DecisionRecorder | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics or WebhookMetrics()
        self.recorder = recorder
        self._in_flight = 0
        self._budget = settings.budget_seconds
        # How long a ready callback waits on the event loop (EWMA): the time a request spent
        # queued before its handler ran, which neither max_in_flight nor the deadline sees.
        self.loop_lag = 0.0
        self._lag_task: asyncio.Task[None] | None = None
        self._max_queue = settings.max_queue_seconds if settings.max_queue_seconds is not None else self._budget / 10

    def health_routes(self) -> http.Routes:
        """Probes and metrics only, for a plain-HTTP port (``server.health_listen``)."""
        routes = http.Routes(max_body_bytes=1024)
        routes.add("GET", "/healthz", self._healthz)
        routes.add("GET", "/readyz", self._readyz)
        routes.add("GET", "/metrics", self._metrics)
        return routes

    def routes(self) -> http.Routes:
        # A body over our own limit is dropped as it arrives and answered with a 400 below.
        routes = http.Routes(max_body_bytes=self.settings.max_body_bytes)
        routes.add("POST", "/validate", self._endpoint("validate", mutating=False))
        routes.add("POST", "/mutate", self._endpoint("mutate", mutating=True))
        routes.add("GET", "/healthz", self._healthz)
        routes.add("GET", "/readyz", self._readyz)
        routes.add("GET", "/metrics", self._metrics)
        return routes

    async def start(self) -> None:
        """Before the port opens: the pipeline's watches and caches, and the loop-lag probe."""
        await self.pipeline.start()
        self._lag_task = asyncio.get_running_loop().create_task(self._watch_loop_lag())
        self.metrics.gauge_sources.append(lambda: [("portcullis_event_loop_lag_seconds", {}, round(self.loop_lag, 6))])

    async def close(self) -> None:
        """After the port has drained."""
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
        await self.pipeline.close()

    async def _watch_loop_lag(self, interval: float = 0.01) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(interval)
            overshoot = max(0.0, loop.time() - asked - interval)
            self.loop_lag += 0.25 * (overshoot - self.loop_lag)

    async def _healthz(self, _request: http.Request) -> http.Response:
        return http.Response.text("ok\n")

    async def _readyz(self, _request: http.Request) -> http.Response:
        waiting = self.pipeline.not_ready()
        if not waiting:
            return http.Response.text("ready\n")
        return http.Response.text(f"not ready: waiting for {', '.join(waiting)}\n", 503)

    async def _metrics(self, _request: http.Request) -> http.Response:
        return http.Response.text(self.metrics.render())

    def _endpoint(self, name: str, *, mutating: bool) -> http.Handler:
        only = _MUTATING_CHECKS if mutating else None
        settings, metrics = self.settings, self.metrics
        perf_counter = time.perf_counter

        # One coroutine per review (no handler -> review -> read layers on the hot path): the
        # slow and rare cases (shedding, oversize or dribbled bodies, failures) call out.
        async def handle(request: http.Request) -> http.Response:
            started = perf_counter()
            if self._in_flight >= settings.max_in_flight or self.loop_lag > self._max_queue:
                # Shed at once: a review that waited in the queue longer than this would be
                # answered after the apiserver gave up on it, silently.
                metrics.shed += 1
                response = _error(429, "webhook overloaded: too many reviews queued or in flight, retry later")
                response.headers = (("Retry-After", "1"),)
                metrics.observe(name, 429, perf_counter() - started)
                return response
            self._in_flight += 1
            try:
                deadline = Deadline(time.monotonic() + self._request_budget(request))
                try:
                    body = await _read_body(request, settings.max_body_bytes, deadline)
                    decoded = review.decode(body)
                except errors.ReviewError as exc:
                    response = _error(400, f"invalid AdmissionReview: {exc}")
                else:
                    response = await self._judge(name, decoded, deadline, only, mutating)
            finally:
                self._in_flight -= 1
            metrics.observe(name, response.status, perf_counter() - started)
            return response

        return handle

    async def _judge(
        self,
        endpoint: str,
        decoded: review.ReviewRequest,
        deadline: Deadline,
        only: frozenset[str] | None,
        mutating: bool,
    ) -> http.Response:
        try:
            outcome = await self.pipeline.evaluate(_subject(decoded), deadline, only=only)
        except errors.ReviewError as exc:
            # The review is well-formed but its object cannot be judged: deny with the reason.
            self.metrics.decisions[(endpoint, "invalid")] += 1
            return http.Response(review.encode_error(decoded.uid, str(exc)))
        except Exception as exc:
            # A bug outside the checks (which have their own failure modes) must deny, not become
            # an HTTP 500: the apiserver applies failurePolicy to that, and `Ignore` would admit.
            log.exception("judging review %s failed unexpectedly", decoded.uid)
            self.metrics.decisions[(endpoint, "error")] += 1
            if mutating:  # /mutate never denies: unchanged, and /validate (same pipeline) refuses
                unchanged = Verdict(True, (), (), {}, ())
                return http.Response(review.encode(decoded.uid, unchanged, mutating=True))
            message = f"portcullis could not judge this object (internal error: {type(exc).__name__}); denied"
            return http.Response(review.encode_error(decoded.uid, message, 500))
        verdict = outcome.verdict
        decisions = self.metrics.decisions
        if mutating:
            # /mutate never denies: it pins verified images; /validate judges (and denies) the result,
            # so an image that failed verification is left as it is for /validate to refuse.
            patches = verdict.patches if verdict.allowed else ()
            verdict = Verdict(True, (), (), {}, patches, skipped_reason=verdict.skipped_reason)
            decisions[(endpoint, "patched" if patches else "unchanged")] += 1
            return http.Response(review.encode(decoded.uid, verdict, mutating=True))
        decisions[(endpoint, outcome.result)] += 1
        if verdict.findings:
            violations = self.metrics.violations
            for finding in verdict.findings:
                violations[(finding.violation.check, finding.mode.value)] += 1
        # Dry runs are not recorded: the chart declares `sideEffects: NoneOnDryRun`, and an audit
        # record is a side effect (the API server calls such a webhook for dry runs only because
        # it promises none). They are counted in the metrics instead.
        if decoded.dry_run:
            decisions[(endpoint, "dry_run")] += 1
        elif self.recorder is not None:
            try:
                await self.recorder.record(endpoint, decoded, outcome, deadline=deadline)
            except AuditUnavailable as exc:
                decisions[(endpoint, "audit_failure")] += 1
                return http.Response(review.encode_error(decoded.uid, str(exc), 500))
        return http.Response(review.encode(decoded.uid, verdict))

    def _request_budget(self, request: http.Request) -> float:
        """The apiserver sends its own timeout as ``?timeout=10s``; the smaller one wins."""
        budget = self._budget - self.loop_lag  # the time it already waited in the loop's queue
        # the query is parsed only when there is one (the apiserver always sends it; probes and
        # clients that do not, skip the parse)
        raw = request.query("timeout") if request.query_string else None
        if raw:
            match = _TIMEOUT_PARAM.match(raw)
            if match:
                value = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]
                budget = min(budget, value - self.settings.margin_seconds - self.loop_lag)
        return max(0.05, budget)


async def _read_body(request: http.Request, limit: int, deadline: Deadline) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise errors.ReviewError(f"body of {request.content_length} bytes exceeds the limit of {limit} bytes")
    if not request.complete:
        # a body still arriving is awaited only within the budget, so a client that dribbles it
        # cannot hold an in-flight slot for ever
        try:
            await deadline.run(request.wait_body(), "reading the review body")
        except errors.DeadlineExceeded as exc:
            raise errors.ReviewError(f"body not received within the request's budget ({exc})") from exc
    if request.too_large:
        raise errors.ReviewError(f"body exceeds the limit of {limit} bytes")
    if request.broken:
        raise errors.ReviewError("body could not be read: the connection closed before its end")
    body = request.body
    if not body:
        raise errors.ReviewError("body is empty")
    return body


def _subject(decoded: review.ReviewRequest) -> Subject:
    obj: Any = decoded.object if decoded.object is not None else {}
    # request.kind is authoritative; for pods/ephemeralcontainers it is the whole Pod.
    kind = "Pod" if decoded.subresource == "ephemeralcontainers" else decoded.kind
    return Subject(
        operation=decoded.operation,
        kind=kind,
        namespace=decoded.namespace or _object_namespace(obj),
        name=decoded.name or workloads.object_name(obj),
        object=obj,
        old_object=decoded.old_object,
        subresource=decoded.subresource,
        username=decoded.username,
        groups=decoded.groups,
        uid=decoded.uid,
        dry_run=decoded.dry_run,
        admission_request=decoded.raw,
    )


def _object_namespace(obj: Any) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    value = meta.get("namespace") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else ""


def _error(status: int, reason: str) -> http.Response:
    return http.Response(orjson.dumps({"error": reason}), status, http.JSON_UTF8)
