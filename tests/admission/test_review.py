"""AdmissionReview decoding: every malformed input is a clear ReviewError, never a crash."""

from __future__ import annotations

import contextlib
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook import errors
from webhook.admission import review
from webhook.core.decision import Finding, Mode, Verdict, Violation

from .conftest import pod
from .conftest import review as make_review


def test_valid_review_decodes_every_field() -> None:
    body = orjson.dumps(make_review(pod(), dry_run=True))
    decoded = review.decode(body)
    assert decoded.kind == "Pod"
    assert decoded.operation == "CREATE"
    assert decoded.dry_run is True
    assert decoded.username == "alice"
    assert decoded.object is not None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}', "apiVersion must be"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}', "kind must be 'AdmissionReview'"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "request is missing"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}', "uid"),
    ],
)
def test_malformed_reviews_name_the_problem(body: bytes, reason: str) -> None:
    with pytest.raises(errors.ReviewError, match=reason):
        review.decode(body)


def test_non_object_workload_is_rejected() -> None:
    doc = make_review(pod())
    doc["request"]["object"] = "a string"
    with pytest.raises(errors.ReviewError, match=r"request.object: expected `object \| null`, got `str`"):
        review.decode(orjson.dumps(doc))


def test_wrong_types_in_request_are_rejected() -> None:
    doc = make_review(pod())
    doc["request"]["dryRun"] = "yes"
    with pytest.raises(errors.ReviewError, match="dryRun"):
        review.decode(orjson.dumps(doc))
    doc = make_review(pod())
    doc["request"]["userInfo"]["groups"] = "admins"
    with pytest.raises(errors.ReviewError, match="groups"):
        review.decode(orjson.dumps(doc))


def test_denied_response_echoes_uid_and_lists_every_violation() -> None:
    v1 = Violation("privilege", "privileged container", container="a", path="spec.containers[0].securityContext")
    v2 = Violation("images", "no signature", container="b")
    verdict = Verdict(False, (Finding(v1, Mode.ENFORCE), Finding(v2, Mode.ENFORCE)), ("w",), {"k": "v"}, ())
    out = orjson.loads(review.encode("uid-1", verdict))
    assert out["apiVersion"] == "admission.k8s.io/v1"
    response = out["response"]
    assert response["uid"] == "uid-1"
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "privileged container" in response["status"]["message"]
    assert "no signature" in response["status"]["message"]
    assert response["warnings"] == ["w"]
    assert response["auditAnnotations"] == {"k": "v"}


def test_mutating_response_carries_a_json_patch() -> None:
    import base64

    patch = ({"op": "replace", "path": "/spec/containers/0/image", "value": "x@sha256:00"},)
    verdict = Verdict(True, (), (), {}, patch)
    response = orjson.loads(review.encode("u", verdict, mutating=True))["response"]
    assert response["patchType"] == "JSONPatch"
    assert orjson.loads(base64.b64decode(response["patch"])) == list(patch)
    assert "patch" not in orjson.loads(review.encode("u", verdict))["response"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_never_crashes_on_random_bytes(body: bytes) -> None:
    with contextlib.suppress(errors.ReviewError):
        review.decode(body)


@settings(max_examples=300, deadline=None)
@given(
    request=st.dictionaries(
        st.sampled_from(
            [
                "uid",
                "kind",
                "operation",
                "object",
                "oldObject",
                "userInfo",
                "dryRun",
                "namespace",
                "name",
                "resource",
                "subResource",
            ]
        ),
        json_values,
        max_size=11,
    )
)
def test_decoder_never_crashes_on_random_requests(request: dict[str, object]) -> None:
    doc = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    body = json.dumps(doc).encode()
    with contextlib.suppress(errors.ReviewError):
        review.decode(body)


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_null_object_on_create_or_update_is_a_bad_review(operation: str) -> None:
    doc = make_review(None, operation=operation, old=pod() if operation == "UPDATE" else None)
    with pytest.raises(errors.ReviewError, match=rf"request.object must be an object for a {operation}"):
        review.decode(orjson.dumps(doc))


def test_null_object_on_delete_is_fine() -> None:
    doc = make_review(None, operation="DELETE", old=pod())
    assert review.decode(orjson.dumps(doc)).object is None


def _warned(warnings: list[str]) -> list[str]:
    verdict = Verdict(True, (), tuple(warnings), {}, ())
    out: list[str] = orjson.loads(review.encode("u", verdict))["response"]["warnings"]
    return out


def test_warnings_stay_within_the_apiservers_4096_characters_with_a_count_of_the_rest() -> None:
    warnings = [f"[privilege] c{i}: " + "x" * 180 for i in range(50)]  # ~10 KB, as a crafted pod gives
    out = _warned(warnings)
    assert sum(len(w) for w in out) <= review.MAX_WARNING_CHARS
    kept = out[:-1]
    assert kept == warnings[: len(kept)]
    assert out[-1] == f"… {50 - len(kept)} more warnings"


def test_short_warning_lists_pass_whole_and_control_characters_are_replaced() -> None:
    assert _warned(["a", "b"]) == ["a", "b"]
    assert _warned(["line one\nline two\x00"]) == ["line one line two "]
    (long,) = _warned(["y" * 5000])
    assert len(long) == 512
    assert long.endswith("…")


@settings(max_examples=200, deadline=None)
@given(uid=st.text(), mutating=st.booleans())
def test_plain_allow_is_the_same_bytes_as_the_general_encoding(uid: str, mutating: bool) -> None:
    """The prebuilt bytes for a plain allow equal what the general path makes from the dicts
    (any uid: quotes, backslashes, control and non-ASCII characters are escaped by orjson)."""
    expected = orjson.dumps(
        {"apiVersion": review.API_VERSION, "kind": "AdmissionReview", "response": {"uid": uid, "allowed": True}}
    )
    assert review.encode(uid, Verdict(True, (), (), {}, ()), mutating=mutating) == expected
    # anything to say takes the general path, with the field in it
    with_warning = orjson.loads(review.encode(uid, Verdict(True, (), ("w",), {}, ()), mutating=mutating))
    assert with_warning["response"] == {"uid": uid, "allowed": True, "warnings": ["w"]}
    annotated = orjson.loads(review.encode(uid, Verdict(True, (), (), {"privilege": "x"}, ()), mutating=mutating))
    assert annotated["response"]["auditAnnotations"] == {"privilege": "x"}
    patch = ({"op": "add", "path": "/x", "value": 1},)
    patched = orjson.loads(review.encode(uid, Verdict(True, (), (), {}, patch), mutating=mutating))
    assert ("patch" in patched["response"]) is mutating


def test_the_denial_and_warnings_kubectl_prints_cannot_drive_a_terminal_or_a_ci_log() -> None:
    """kubectl prints a webhook's message and warnings as they are, to a terminal or a CI log. An
    image reference (the API server does not check its form) or a policy message quoting an
    annotation can carry an escape sequence, or ``##vso[`` that the Azure Pipelines agent runs
    wherever it sits in a line; both are shown escaped, not acted on."""
    hostile = "evil\x1b]0;owned\x07##vso[task.setvariable variable=PATH]/tmp\nnext"
    v = Violation("images", f"image {hostile!s} is not signed")
    verdict = Verdict(False, (Finding(v, Mode.ENFORCE),), (f"warned {hostile}",), {}, ())
    response = orjson.loads(review.encode("u", verdict))["response"]
    message, (warning,) = response["status"]["message"], response["warnings"]
    for text in (message, warning):
        assert "\x1b" not in text
        assert "\n" not in text
        assert "##vso[" not in text.lower()
    assert "evil\\x1b]0;owned\\x07##vso\\x5btask.setvariable variable=PATH]/tmp\\nnext" in message
