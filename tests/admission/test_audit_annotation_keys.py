"""Audit annotation keys the API server accepts.

The API server stores each key a webhook returns as ``<webhook name>/<key>`` and keeps it only
if that combined key passes its ``checkKeyFormat``: split on '/' into exactly two parts, and a
qualified name (apimachinery ``IsQualifiedName``: a DNS-1123 subdomain prefix of at most 253
characters, a name part of at most 63 characters of ``[A-Za-z0-9-_.]`` starting and ending
alphanumeric). The rule is written out here from that definition and applied to every key the
webhook can produce, under the webhook names the chart registers.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from webhook import config as config_mod
from webhook.admission import review
from webhook.checks import registry
from webhook.checks.pipeline import Pipeline, Subject
from webhook.core.deadline import Deadline
from webhook.core.decision import CheckResult, Mode, Violation, annotation_key, combine

from .conftest import pod

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
# The names the chart gives its webhooks (templates/webhooks.yaml).
WEBHOOK_NAMES = ("validate.portcullis.dev", "mutate.portcullis.dev")


def apiserver_accepts(key: str) -> bool:
    """The API server's check of a stored audit annotation key (``checkKeyFormat``)."""
    parts = key.split("/")
    if len(parts) != 2:
        return False
    prefix, name = parts
    if not prefix or len(prefix) > 253 or not _SUBDOMAIN.match(prefix):
        return False
    return 0 < len(name) <= 63 and bool(_NAME.match(name))


def stored_keys(annotations: dict[str, Any]) -> list[str]:
    return [f"{webhook}/{key}" for webhook in WEBHOOK_NAMES for key in annotations]


def test_the_rule_rejects_the_old_two_slash_format() -> None:
    assert not apiserver_accepts("validate.portcullis.dev/portcullis.dev/privilege")
    assert apiserver_accepts("validate.portcullis.dev/privilege")
    assert apiserver_accepts("podsecuritypolicy.admission.k8s.io/admit-policy")


@pytest.mark.parametrize("check_id", [*(m.CHECK_ID for m in registry._BUILDERS), "exempt"])
def test_every_check_annotation_key_is_stored_by_the_apiserver(check_id: str) -> None:
    results = {check_id: CheckResult([Violation(check_id, "finding")])}
    verdict = combine(results, {check_id: Mode.AUDIT})
    assert list(verdict.audit_annotations) == [check_id]
    assert all(apiserver_accepts(k) for k in stored_keys(dict(verdict.audit_annotations)))


@pytest.mark.parametrize(
    "name", ["gatekeeper/constraint", "a b", "-leading", "x" * 100, "ünïcode", "/", "trailing.", "ok_name"]
)
def test_any_name_becomes_a_key_the_apiserver_stores(name: str) -> None:
    assert apiserver_accepts(f"validate.portcullis.dev/{annotation_key(name)}")


async def test_served_review_carries_valid_keys_for_audit_findings_and_exemptions() -> None:
    """Through the pipeline and the encoder: audit-level PSS findings plus an exemption."""
    cfg = config_mod.parse(
        {
            "privilege": {"level": "privileged", "warn_level": "privileged", "audit_level": "restricted"},
            "exemptions": [{"namespaces": ["default"], "checks": ["runtimeclass"], "reason": "trusted"}],
        }
    )
    from webhook.checks.services import Services

    pipeline = Pipeline(cfg, registry.build_checks(cfg, Services()))
    obj = pod(containers=[{"name": "app", "image": "nginx:1.27", "securityContext": {"privileged": True}}])
    outcome = await pipeline.evaluate(Subject("CREATE", "Pod", "default", "p", obj), Deadline.after(5))
    answer = orjson.loads(review.encode("u", outcome.verdict))["response"]
    assert set(answer["auditAnnotations"]) == {"privilege", "exempt"}
    assert all(apiserver_accepts(k) for k in stored_keys(answer["auditAnnotations"]))
