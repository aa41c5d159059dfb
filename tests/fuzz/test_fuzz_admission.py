"""Fuzzing the admission path: AdmissionReview decoding, then the real checks and the whole
pipeline on workloads whose every field may hold the wrong JSON type.

Contract under test: bad input yields violations, or ``ReviewError`` (HTTP 400 / a denial with
the reason) — never ``TypeError``/``AttributeError`` from a check (which the pipeline would turn
into an "internal error" failure) and never an exception out of ``Pipeline.evaluate``.
Crashes found and not fixed yet are listed in ``known.py`` and pinned by xfail tests below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook import config as config_mod
from webhook import errors
from webhook.admission import review, server
from webhook.checks.pipeline import Pipeline, Subject
from webhook.checks.registry import build_checks
from webhook.checks.services import Services
from webhook.core import workloads
from webhook.core.deadline import Deadline
from webhook.core.request import RequestContext

from . import known
from . import strategies as S

CONFIG = config_mod.parse(S.STRICT_CONFIG)
CHECKS = build_checks(CONFIG, Services(ci=True))


def test_the_strict_config_builds_every_pure_check() -> None:
    assert {c.id for c in CHECKS} >= {"privilege", "runtimeclass", "gpu"}


# -- decode ------------------------------------------------------------------------------------


@settings(S.FUZZ, max_examples=S.examples(150))
@given(st.binary(max_size=256))
def test_decode_of_arbitrary_bytes_raises_only_review_error(body: bytes) -> None:
    with contextlib.suppress(errors.ReviewError):
        review.decode(body)


envelope = st.fixed_dictionaries(
    {},
    optional={
        "apiVersion": S.maybe(st.just("admission.k8s.io/v1")),
        "kind": S.maybe(st.just("AdmissionReview")),
        "request": S.obj(
            uid=S.maybe(st.sampled_from(["u", ""])),
            kind=S.obj(kind=S.maybe(st.sampled_from(S.KINDS)), group=S.maybe(st.just("apps"))),
            resource=S.obj(resource=S.maybe(st.just("pods"))),
            subResource=S.maybe(st.sampled_from(["", "status", "ephemeralcontainers"])),
            operation=S.maybe(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"])),
            namespace=S.maybe(st.just("default")),
            name=S.maybe(st.just("n")),
            userInfo=S.obj(username=S.maybe(st.just("u")), groups=S.lst(S.maybe(st.just("g")))),
            object=S.maybe(S.workloads().map(lambda kw: kw[1])),
            oldObject=S.awkward,
            dryRun=S.awkward,
        ),
    },
)


@settings(S.FUZZ, max_examples=S.examples(150))
@given(envelope)
def test_decode_of_ill_typed_reviews_raises_only_review_error(doc: dict[str, Any]) -> None:
    try:
        decoded = review.decode(orjson.dumps(doc))
    except errors.ReviewError:
        return
    assert decoded.uid
    server._subject(decoded)  # the server's next step must accept whatever decode let through


# -- the real checks, one by one ---------------------------------------------------------------


def _pods(kind: str, obj: Any) -> list[workloads.PodSpecRef] | None:
    try:
        return workloads.pod_specs(obj, kind)
    except errors.ReviewError:
        return None


async def _run_checks(kind: str, obj: Any, labels: dict[str, str]) -> None:
    pods = _pods(kind, obj)
    if pods is None:
        return
    ctx = RequestContext("CREATE", kind, "default", "fuzz", namespace_labels=labels, object=obj)
    for check in CHECKS:
        try:
            result = await check.run(pods, ctx)
        except errors.PortcullisError:
            continue
        except Exception as exc:
            if known.is_known(exc):
                continue
            raise AssertionError(f"check {check.id} crashed: {known.signature(exc)}") from exc
        for violation in result.violations:
            assert isinstance(violation.message, str)
            assert violation.message


@settings(S.FUZZ, max_examples=S.examples(300))
@given(S.workloads(), st.booleans())
def test_checks_judge_ill_typed_workloads_without_crashing(workload: tuple[str, Any], untrusted: bool) -> None:
    kind, obj = workload
    asyncio.run(_run_checks(kind, obj, S.UNTRUSTED_LABELS if untrusted else {}))


# -- the whole pipeline ------------------------------------------------------------------------


class _Crashes(logging.Handler):
    """Collects the exceptions the pipeline logs when a check fails unexpectedly."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.excs: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.excs.append(record.exc_info[1])


async def _evaluate(subject: Subject) -> None:
    pipeline = Pipeline(CONFIG, CHECKS)
    handler = _Crashes()
    logger = logging.getLogger("portcullis.admission")
    logger.addHandler(handler)
    try:
        try:
            outcome = await pipeline.evaluate(subject, Deadline.after(30))
        except errors.ReviewError:
            return
        except Exception as exc:
            if known.is_known(exc):
                return
            raise AssertionError(f"pipeline crashed: {known.signature(exc)}") from exc
    finally:
        logger.removeHandler(handler)
    unknown = [known.signature(e) for e in handler.excs if not known.is_known(e)]
    assert not unknown, f"checks failed unexpectedly: {unknown}"
    texts = [f.violation.message for f in outcome.verdict.findings] + list(outcome.verdict.warnings)
    if not handler.excs:
        assert not any("internal error" in t for t in texts), texts


@settings(S.FUZZ, max_examples=S.examples(200))
@given(S.workloads(), st.sampled_from(["CREATE", "UPDATE"]), S.awkward)
def test_pipeline_decides_every_ill_typed_workload(workload: tuple[str, Any], operation: str, old: Any) -> None:
    kind, obj = workload
    old_object = old if isinstance(old, dict) else None
    asyncio.run(_evaluate(Subject(operation, kind, "default", "fuzz", obj, old_object=old_object)))


@settings(S.FUZZ, max_examples=S.examples(100))
@given(S.workloads())
def test_decoded_reviews_reach_a_verdict_or_a_review_error(workload: tuple[str, Any]) -> None:
    kind, obj = workload
    decoded = review.decode(orjson.dumps(S.review_of(kind, obj)))
    asyncio.run(_evaluate(server._subject(decoded)))


# -- regression tests: every crash found, as an explicit example -------------------------------


def _pod(spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "nginx:1.27"}])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **metadata}, "spec": spec}


def _sc(sc: dict[str, Any]) -> dict[str, Any]:
    return _pod({"containers": [{"name": "app", "image": "nginx:1.27", "securityContext": sc}]})


def _gpu_container(**fields: Any) -> dict[str, Any]:
    container = {"name": "app", "image": "nginx:1.27", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    return {**container, **fields}


# (id, object, reason): each fails today with the exception named in known.KNOWN.
REGRESSIONS = [
    (
        "capabilities-add-object",
        _sc({"capabilities": {"add": [{}]}}),
        None,  # fixed: pss checks test isinstance(v, str) before set membership (a violation)
    ),
    ("apparmor-type-object", _sc({"appArmorProfile": {"type": {}}}), None),  # fixed
    ("selinux-type-list", _sc({"seLinuxOptions": {"type": ["x"]}}), None),  # fixed
    ("seccomp-type-object", _sc({"seccompProfile": {"type": {}}}), None),  # fixed
    (
        "pod-seccomp-type-list",
        _pod({"securityContext": {"seccompProfile": {"type": ["x"]}}}),
        None,  # fixed
    ),
    (
        "sysctl-name-list",
        _pod({"securityContext": {"sysctls": [{"name": ["x"]}]}}),
        None,  # fixed
    ),
    ("overhead-list", _pod({"overhead": [1]}), None),  # fixed: a gpu violation naming the field
    (
        "resources-list",
        _pod({"containers": [{"name": "app", "resources": [1]}]}),
        None,  # fixed: quota.requests raises FieldError, a gpu violation naming the field
    ),
    (
        "requests-list",
        _pod({"containers": [{"name": "app", "resources": {"requests": [1]}}]}),
        None,  # fixed
    ),
    (
        "node-selector-string",
        _pod({"containers": [_gpu_container()], "nodeSelector": "nvidia.com/gpu.product"}),
        None,  # fixed: quota.model raises FieldError, a gpu violation naming the field
    ),
    (
        "affinity-list",
        _pod({"containers": [_gpu_container()], "affinity": [1]}),
        None,  # fixed
    ),
    (
        "gpu-limit-not-a-quantity",
        _pod(
            {
                "containers": [
                    {
                        "name": "app",
                        "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "abc"}},
                    }
                ]
            }
        ),
        None,  # fixed: a check's InputError is a denial naming the reason (admission.pipeline._guarded)
    ),
    (
        "runtime-class-list",
        _pod({"runtimeClassName": ["gvisor"]}),
        None,  # fixed: admission.pipeline.Pipeline._exemptions keeps only string values
    ),
    (
        "service-account-object",
        _pod({"serviceAccountName": {"a": 1}}),
        None,  # fixed: admission.pipeline.Pipeline._exemptions keeps only string values
    ),
]


@pytest.mark.parametrize(
    "obj",
    # An entry whose reason is None is fixed: it must pass (no xfail mark).
    [pytest.param(o, id=i, marks=[pytest.mark.xfail(strict=True, reason=r)] if r else []) for i, o, r in REGRESSIONS],
)
async def test_regression_ill_typed_field_is_judged_without_crashing(obj: dict[str, Any]) -> None:
    pods = workloads.pod_specs(obj, "Pod")
    ctx = RequestContext("CREATE", "Pod", "default", "p", object=obj)
    for check in CHECKS:
        with contextlib.suppress(errors.PortcullisError):
            await check.run(pods, ctx)
    handler = _Crashes()
    logging.getLogger("portcullis.admission").addHandler(handler)
    try:
        await Pipeline(CONFIG, CHECKS).evaluate(Subject("CREATE", "Pod", "default", "p", obj), Deadline.after(30))
    finally:
        logging.getLogger("portcullis.admission").removeHandler(handler)
    assert not handler.excs


_HANG = """
import sys
from webhook.quota import quantity
try:
    quantity.milli("1e999999999")
except quantity.QuantityError:
    print("refused")
"""


@pytest.mark.slow
def test_regression_huge_quantity_exponent_is_refused_quickly() -> None:
    # A hang guard, not a timing assertion: the fixed parser answers in microseconds.
    try:
        proc = subprocess.run([sys.executable, "-c", _HANG], capture_output=True, text=True, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail("parsing a quantity with a huge exponent did not finish")
    assert proc.stdout.strip() == "refused", proc.stderr
