"""Fuzzing what crosses the audit log's and the registry client's boundaries: signed notes,
checkpoints, keys, entry bundles, tile paths, records, tlog-proofs, witness requests; manifest and
index bodies, ``WWW-Authenticate`` challenges, token answers, docker config secrets, image references.

Contract: ``AuditFormatError`` (``NoteError``, ``RecordError``), ``TileFormatError``/``ProofError``
(``ValueError`` subclasses the log documents), ``RegistryError`` or a problem string — never
another exception. Real keys and signatures (Ed25519 via ``cryptography``); mutations start from
valid inputs so the fuzzer gets past the first check.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook import errors
from webhook.audit import merkle, note, proofs, records, tiles, witness
from webhook.core.deadline import Deadline
from webhook.signatures import credentials, reference, registry

from . import strategies as S

SIGNER = note.generate("fuzz.example/log")
VERIFIER = SIGNER.verifier
ROOT = merkle.leaf_hash(b"x")
CHECKPOINT = note.sign_checkpoint(note.Checkpoint("fuzz.example/log", 1, ROOT), SIGNER)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes flipped, inserted, deleted or spliced (valid-ish inputs)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "splice"]))
        pos = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\n", b" ", b"+", b"\xe2\x80\x94", b"\x00", b"0", b"=", b"\n\n"]))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        else:
            data[pos:pos] = draw(st.binary(max_size=8))
    return bytes(data)


# -- signed notes, checkpoints, keys -----------------------------------------------------------


@settings(S.FUZZ, max_examples=S.examples(200))
@given(st.one_of(mutated(CHECKPOINT), st.binary(max_size=64)))
def test_signed_checkpoints_open_or_raise_note_error(data: bytes) -> None:
    try:
        cp, _ = note.open_checkpoint(data, VERIFIER)
    except errors.AuditFormatError:
        return
    assert cp.size >= 0
    assert len(cp.root) == 32


# base64.b64decode(str, validate=True) raises a plain ValueError (not binascii.Error) for a str
# holding non-ASCII characters: the parsers must catch it (these were found by the fuzzers).


def test_regression_signature_line_with_non_ascii_base64_is_a_note_error() -> None:
    data = CHECKPOINT.replace(b"\n\n\xe2\x80\x94 fuzz.example/log ", b"\n\n\xe2\x80\x94 fuzz.example/log \xc3\xa9")
    with pytest.raises(errors.AuditFormatError):
        note.parse_note(data)


def test_regression_checkpoint_with_non_ascii_root_is_a_note_error() -> None:
    with pytest.raises(errors.AuditFormatError):
        note.parse_checkpoint("fuzz.example/log\n1\n\u00e9AAAA\n".encode())


def test_regression_tlog_proof_with_non_ascii_extra_names_the_problem() -> None:
    assert proofs.verify_tlog_proof(_proof().replace(b"extra ", b"extra \xc3\xa9"), None, VERIFIER, [])


@settings(S.FUZZ, max_examples=S.examples(200))
@given(st.one_of(mutated(CHECKPOINT.split(b"\n\n")[0] + b"\n"), st.binary(max_size=64)))
def test_checkpoint_text_parses_or_raises_note_error(text: bytes) -> None:
    with contextlib.suppress(errors.AuditFormatError):
        note.parse_checkpoint(text)


@settings(S.FUZZ, max_examples=S.examples(200))
@given(
    st.one_of(
        mutated(VERIFIER.vkey().encode()), mutated(SIGNER.private_text().encode()), st.text(max_size=40).map(str.encode)
    )
)
def test_keys_parse_or_raise_note_error(raw: bytes) -> None:
    text = raw.decode("utf-8", "replace")
    for parse in (note.parse_vkey, note.parse_private):
        with contextlib.suppress(errors.AuditFormatError):
            parse(text)


# -- tiles, bundles, records -------------------------------------------------------------------


@settings(S.FUZZ, max_examples=S.examples(200))
@given(st.one_of(st.binary(max_size=64), mutated(tiles.encode_bundle_entry(b"abc") + tiles.encode_bundle_entry(b""))))
def test_entry_bundles_split_or_raise_tile_format_error(data: bytes) -> None:
    try:
        entries = tiles.decode_bundle(data)
    except tiles.TileFormatError:
        return
    assert b"".join(tiles.encode_bundle_entry(e) for e in entries) == data


@settings(S.FUZZ, max_examples=S.examples(200))
@given(
    st.one_of(
        st.text(max_size=30), st.from_regex(r"\Atile/(entries|[0-9]{1,3})/(x[0-9]{3}/){0,3}[0-9]{3}(\.p/[0-9]{1,4})?\Z")
    )
)
def test_tile_paths_parse_to_a_round_trip_or_none(rel: str) -> None:
    tile = tiles.parse_tile_path(rel)
    if tile is not None:
        assert tile.path() == rel


RECORD = records.encode_record("2026-01-01T00:00:00Z", "admission", "w", {"a": [1, "b", None], "n": 2.5})


@settings(S.FUZZ, max_examples=S.examples(200))
@given(st.one_of(mutated(RECORD), st.binary(max_size=64), S.json_values.map(orjson.dumps),
                 st.fixed_dictionaries({"content": S.awkward, "kind": S.awkward, "time": S.awkward,
                                        "writer": S.awkward}).map(orjson.dumps)))  # fmt: skip
def test_records_decode_or_raise_record_error(data: bytes) -> None:
    with contextlib.suppress(errors.AuditFormatError):
        records.decode_record(data)


def test_regression_record_with_a_list_kind_is_a_record_error() -> None:
    with pytest.raises(errors.AuditFormatError):
        records.decode_record(b'{"content":{},"kind":[],"time":"t","writer":"w"}')


def _proof(index: str = "0") -> bytes:
    cp = note.sign_checkpoint(note.Checkpoint("fuzz.example/log", 1, merkle.leaf_hash(RECORD)), SIGNER)
    extra = base64.b64encode(RECORD).decode()
    return f"{proofs.HEADER}\nextra {extra}\nindex {index}\n\n".encode() + cp


def test_a_valid_tlog_proof_verifies() -> None:
    assert proofs.verify_tlog_proof(_proof(), None, VERIFIER, []) is None


@settings(S.FUZZ, max_examples=S.examples(200))
@given(st.one_of(mutated(_proof()), st.binary(max_size=64)))
def test_tlog_proofs_verify_or_name_the_problem(data: bytes) -> None:
    problem = proofs.verify_tlog_proof(data, None, VERIFIER, [])
    assert problem is None or isinstance(problem, str)


def test_regression_tlog_proof_with_a_superscript_index_names_the_problem() -> None:
    assert proofs.verify_tlog_proof(_proof("²"), None, VERIFIER, []) is not None


@settings(S.FUZZ, max_examples=S.examples(200))
@given(st.one_of(mutated(b"old 0\n\n" + CHECKPOINT), mutated(witness.encode_request(1, [ROOT], CHECKPOINT)),
                 st.binary(max_size=64)))  # fmt: skip
def test_witness_requests_parse_or_raise_request_error(body: bytes) -> None:
    with contextlib.suppress(witness.RequestError):
        witness.parse_request(body)


@settings(S.FUZZ, max_examples=S.examples(200))
@given(st.integers(-2, 2**64), st.integers(-2, 2**64), st.lists(st.binary(min_size=0, max_size=33), max_size=70))
def test_merkle_proofs_verify_or_raise_proof_error(index: int, size: int, proof: list[bytes]) -> None:
    for check in (
        lambda: merkle.verify_inclusion(ROOT, index, size, proof, ROOT),
        lambda: merkle.verify_consistency(index, size, ROOT, ROOT, proof),
    ):
        with contextlib.suppress(merkle.ProofError):
            check()


# -- registry responses ------------------------------------------------------------------------

index_bodies = st.one_of(
    st.binary(max_size=64),
    S.json_values.map(orjson.dumps),
    st.fixed_dictionaries({}, optional={"mediaType": S.awkward, "manifests": S.maybe(st.lists(
        S.obj(digest=S.maybe(st.just("sha256:" + "0" * 64)), mediaType=S.awkward, platform=S.awkward)))}
    ).map(orjson.dumps),
)  # fmt: skip


@settings(S.FUZZ, max_examples=S.examples(200))
@given(index_bodies)
def test_manifest_and_index_bodies_are_read_without_crashing(body: bytes) -> None:
    """Junk is a ``ContentError`` (a verdict), never another exception."""
    with contextlib.suppress(registry.ContentError):
        descriptors = registry.descriptors("r.io", body, "index")
        assert all(isinstance(d["digest"], str) for d in descriptors)
    for media_type in ("", "x", registry.OCI_MANIFEST, registry.OCI_INDEX):
        with contextlib.suppress(registry.ContentError):
            manifest = registry.parse_manifest("r.io", body, media_type, registry.sha256_digest(body), "m")
            assert isinstance(manifest.media_type, str)
            assert isinstance(manifest.document(), dict)


def test_regression_index_with_a_numeric_manifests_field_is_content_not_a_crash() -> None:
    with pytest.raises(registry.ContentError, match="not an image index"):
        registry.descriptors("r.io", b'{"manifests": 5}', "index")


@settings(S.FUZZ, max_examples=S.examples(200))
@given(st.one_of(S.json_values.map(orjson.dumps), st.binary(max_size=40),
                 st.fixed_dictionaries({}, optional={"auths": S.maybe(st.dictionaries(
                     st.sampled_from(["https://index.docker.io/v1/", "r.io", ""]),
                     S.obj(auth=S.maybe(st.sampled_from(["dTpw", "!!", ""])), username=S.awkward, password=S.awkward),
                     max_size=2))}).map(orjson.dumps)))  # fmt: skip
def test_docker_config_secrets_parse_without_crashing(data: bytes) -> None:
    found = credentials.parse_docker_config(data)
    assert all(isinstance(c.username, str) and isinstance(c.password, str) for c in found.values())


def test_regression_docker_config_with_non_ascii_auth_skips_only_that_entry() -> None:
    good = base64.b64encode(b"u:p").decode()
    data = orjson.dumps({"auths": {"a.io": {"auth": "\u0080"}, "b.io": {"auth": good}}})
    assert credentials.parse_docker_config(data)["b.io"] == registry.Credentials("u", "p")


@settings(S.FUZZ, max_examples=S.examples(300))
@given(st.one_of(st.text(max_size=40), st.from_regex(r"\A[a-z0-9.:/@_-]{0,40}\Z")))
def test_image_references_parse_or_raise_their_error(text: str) -> None:
    with contextlib.suppress(reference.ReferenceError_):
        reference.parse(text)


# WWW-Authenticate challenges and token answers, against a local token endpoint (loopback only).


class _TokenServer:
    """An aiohttp token endpoint on 127.0.0.1 in its own thread, answering whatever body is set."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/token", self._token)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()
        self.loop.run_forever()

    async def _token(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.body, content_type="application/json")

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def token_server() -> Iterator[_TokenServer]:
    server = _TokenServer()
    try:
        yield server
    finally:
        server.stop()


_REGISTRY = "127.0.0.1:5000"  # never contacted: only the token realm is


def _challenge_parts(port: int) -> st.SearchStrategy[str]:
    realm = f"http://127.0.0.1:{port}/token"
    params = st.lists(
        st.one_of(
            st.just(f'realm="{realm}"'),
            st.sampled_from(['realm="https://', 'realm=""', 'realm="ftp://x"', 'service="r"',
                             'scope="repository:a:pull"',
                             'scope=""', "realm=unquoted", 'x="y"', ",", '"']),
            st.text(max_size=10),
        ),
        max_size=4,
    ).map(",".join)  # fmt: skip
    scheme = st.sampled_from(["Bearer", "bearer", "Basic", "Negotiate", "", "Bearer\t"])
    return st.tuples(scheme, params).map(" ".join)


async def _authorize(challenge: str, creds: registry.Credentials | None) -> None:
    client = registry.RegistryClient(insecure_registries=frozenset({_REGISTRY}), timeout=5)
    try:
        await client._authorize(_REGISTRY, "team/app", challenge, creds, Deadline.after(10))
    except (errors.RegistryError, registry.ContentError):  # outage, or a verdict (issue 20)
        pass
    finally:
        await client.close()


@settings(S.FUZZ, max_examples=S.examples(100))
@given(st.data())
def test_www_authenticate_challenges_and_token_answers(token_server: _TokenServer, data: st.DataObject) -> None:
    challenge = data.draw(_challenge_parts(token_server.port))
    realms = [p for p in challenge.split('"') if p.startswith(("http://", "https://"))]
    if any(not r.startswith(f"http://127.0.0.1:{token_server.port}/") for r in realms):
        return  # loopback only: a realm elsewhere would be a real network call
    token_server.body = data.draw(
        st.one_of(
            st.binary(max_size=40),
            S.json_values.map(orjson.dumps),
            st.fixed_dictionaries({}, optional={"token": S.awkward, "access_token": S.awkward,
                                                "expires_in": S.awkward}).map(orjson.dumps),
        )
    )  # fmt: skip
    creds = data.draw(st.one_of(st.none(), st.just(registry.Credentials("u", "p"))))
    token_server.call(_authorize(challenge, creds))
