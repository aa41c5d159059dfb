"""How violations and modes combine into one verdict."""

from __future__ import annotations

from webhook.core.decision import CheckResult, Mode, Violation, combine


def test_enforce_violation_denies_and_warn_only_warns() -> None:
    results = {
        "privilege": CheckResult([Violation("privilege", "bad", mode=Mode.ENFORCE)]),
        "images": CheckResult([Violation("images", "unsigned")]),
    }
    verdict = combine(results, {"privilege": Mode.ENFORCE, "images": Mode.WARN})
    assert not verdict.allowed
    assert [v.message for v in verdict.denials] == ["bad"]
    assert any("unsigned" in w for w in verdict.warnings)


def test_configured_mode_caps_the_violations_own_mode() -> None:
    results = {"privilege": CheckResult([Violation("privilege", "bad", mode=Mode.ENFORCE)])}
    verdict = combine(results, {"privilege": Mode.AUDIT})
    assert verdict.allowed
    assert "privilege" in verdict.audit_annotations
    assert not verdict.warnings


def test_off_mode_says_nothing() -> None:
    results = {"gpu": CheckResult([Violation("gpu", "over quota")], warnings=["80% used"])}
    verdict = combine(results, {"gpu": Mode.OFF})
    assert verdict.allowed
    assert verdict.findings == ()
    assert verdict.warnings == ()


def test_patches_are_dropped_when_denied() -> None:
    patch = {"op": "replace", "path": "/spec/containers/0/image", "value": "a@sha256:00"}
    allowed = combine({"images": CheckResult(patches=[patch])}, {})
    assert allowed.patches == (patch,)
    denied = combine({"images": CheckResult([Violation("images", "x")], patches=[patch])}, {})
    assert denied.patches == ()
