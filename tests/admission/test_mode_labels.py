"""``mode_labels``: what a namespace label ``portcullis.dev/<check>=<mode>`` may do to a check's mode.

Whoever may label a namespace is often not whoever sets policy, so by default (``tighten_only``)
such a label can only make a check stricter than configured. Pod Security labels are not
governed by this key: they keep Pod Security Admission's meaning, relaxing included.
"""

from __future__ import annotations

from typing import Any

import pytest

from webhook import config as config_mod
from webhook import errors
from webhook.checks import privilege
from webhook.checks.pipeline import Outcome, Pipeline, Subject
from webhook.checks.services import Services
from webhook.core.deadline import Deadline
from webhook.core.decision import Mode

LABEL = "portcullis.dev/privilege"
MODES = ("off", "audit", "warn", "enforce")


def config(policy: str | None = None, configured: str = "enforce", **extra: Any) -> config_mod.Config:
    data: dict[str, Any] = {"checks": {"privilege": {"mode": configured}}, **extra}
    if policy is not None:
        data["mode_labels"] = policy
    return config_mod.parse(data)


@pytest.mark.parametrize("configured", MODES)
@pytest.mark.parametrize("label", MODES)
def test_tighten_only_takes_the_stricter_of_label_and_config(configured: str, label: str) -> None:
    expected = max(Mode(configured), Mode(label), key=MODES.index)
    assert config("tighten_only", configured).mode_for("privilege", {LABEL: label}) is expected


def test_tighten_only_is_the_default() -> None:
    assert config_mod.Config().mode_labels == "tighten_only"
    assert config(None, "enforce").mode_for("privilege", {LABEL: "off"}) is Mode.ENFORCE
    assert config(None, "audit").mode_for("privilege", {LABEL: "enforce"}) is Mode.ENFORCE


@pytest.mark.parametrize("configured", MODES)
@pytest.mark.parametrize("label", MODES)
def test_any_lets_the_label_set_the_mode_either_way(configured: str, label: str) -> None:
    assert config("any", configured).mode_for("privilege", {LABEL: label}) is Mode(label)


@pytest.mark.parametrize("configured", MODES)
@pytest.mark.parametrize("label", MODES)
def test_ignore_takes_the_mode_from_the_config_only(configured: str, label: str) -> None:
    assert config("ignore", configured).mode_for("privilege", {LABEL: label}) is Mode(configured)


@pytest.mark.parametrize("policy", ["any", "tighten_only"])
@pytest.mark.parametrize("value", ["OFF", "Enforce", " warn", "disabled", ""])
def test_values_that_are_not_exact_modes_change_nothing(policy: str, value: str) -> None:
    assert config(policy, "warn").mode_for("privilege", {LABEL: value}) is Mode.WARN


def test_an_empty_prefix_reads_no_labels_whatever_mode_labels_says() -> None:
    cfg = config("any", "enforce", mode_label_prefix="")
    assert cfg.mode_for("privilege", {LABEL: "off", "privilege": "off"}) is Mode.ENFORCE


def test_the_prefix_names_the_label() -> None:
    cfg = config("any", "enforce", mode_label_prefix="policy.example.com/")
    assert cfg.mode_for("privilege", {LABEL: "off"}) is Mode.ENFORCE
    assert cfg.mode_for("privilege", {"policy.example.com/privilege": "off"}) is Mode.OFF


def test_an_unknown_mode_labels_value_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(errors.ConfigError, match=r"mode_labels.*'loose'"):
        config_mod.parse({"mode_labels": "loose"})


# -- end to end, through the pipeline and the real Pod Security check -------------------------------


async def judge(cfg: config_mod.Config, labels: dict[str, str], **security: Any) -> Outcome:
    """A pod in namespace ``team`` whose labels (as the watch would give them) are ``labels``."""
    container = {"name": "app", "image": "nginx:1.27", "securityContext": security}
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team"}}
    obj["spec"] = {"containers": [container]}
    pipeline = Pipeline(cfg, [privilege.build(cfg, Services())], namespaces=_Labels(labels))
    return await pipeline.evaluate(Subject("CREATE", "Pod", "team", "p", obj), Deadline.after(5))


class _Labels:
    def __init__(self, labels: dict[str, str]) -> None:
        self._labels = labels

    def labels(self, namespace: str) -> dict[str, str]:
        return self._labels


@pytest.mark.parametrize(("policy", "allowed"), [("any", True), ("tighten_only", False), ("ignore", False)])
async def test_a_namespace_label_switching_the_check_off_needs_mode_labels_any(policy: str, allowed: bool) -> None:
    outcome = await judge(config(policy), {LABEL: "off"}, privileged=True)
    assert outcome.verdict.allowed is allowed


@pytest.mark.parametrize(("policy", "allowed"), [("any", False), ("tighten_only", False), ("ignore", True)])
async def test_a_namespace_label_may_turn_a_warned_check_into_enforcement(policy: str, allowed: bool) -> None:
    outcome = await judge(config(policy, "warn"), {LABEL: "enforce"}, privileged=True)
    assert outcome.verdict.allowed is allowed
    if allowed:
        assert any("privileged" in w for w in outcome.verdict.warnings)


async def test_pod_security_labels_keep_their_meaning_and_may_relax_under_tighten_only() -> None:
    """As in Pod Security Admission, ``enforce: privileged`` relaxes; RBAC on namespaces governs it."""
    relaxed = await judge(config("tighten_only"), {"pod-security.kubernetes.io/enforce": "privileged"}, privileged=True)
    assert relaxed.verdict.allowed
    baseline = await judge(config("tighten_only"), {}, privileged=True)
    assert not baseline.verdict.allowed
