"""C2SP formats: tile paths, entry bundles, signed notes (spec examples), vkeys, cosignatures,
checkpoints, and RFC 8785 canonical records."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.audit import note, records, tiles
from webhook.audit.tiles import ENTRIES, TileId

# -- tlog-tiles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "path"),
    [(0, "000"), (7, "007"), (999, "999"), (1000, "x001/000"), (1234067, "x001/x234/067")],
)
def test_tile_indexes_use_three_digit_x_prefixed_segments(index: int, path: str) -> None:
    assert tiles.encode_index(index) == path


def test_tile_paths_for_full_partial_and_entry_bundles() -> None:
    assert tiles.tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tiles.tile_path(1, 3, 17) == "tile/1/003.p/17"
    assert tiles.tile_path(ENTRIES, 5, 1) == "tile/entries/005.p/1"


@pytest.mark.parametrize(
    "rel", ["tile/0/000", "tile/12/x001/000.p/255", "tile/entries/x002/x000/999", "tile/63/000.p/1"]
)
def test_canonical_tile_paths_round_trip(rel: str) -> None:
    tid = tiles.parse_tile_path(rel)
    assert tid is not None
    assert tid.path() == rel


@pytest.mark.parametrize(
    "rel",
    [
        "tile/00/000",  # leading zero in level
        "tile/64/000",  # level out of range
        "tile/0/0000",
        "tile/0/001/000",  # non-final segment without x
        "tile/0/x000/001",  # needless leading segment
        "tile/0/000.p/256",
        "tile/0/000.p/0",
        "tile/0/000.p/07",
        "tile/data/000",
    ],
)
def test_non_canonical_tile_paths_are_rejected(rel: str) -> None:
    assert tiles.parse_tile_path(rel) is None


def test_the_spec_example_of_a_70000_entry_tree() -> None:
    """tlog-tiles: 273 full level-0 tiles + width 112, one full level-1 + width 17, level 2 width 1."""
    edge = list(tiles.tiles_for_size(70000))
    assert edge == [TileId(0, 273, 112), TileId(1, 1, 17), TileId(2, 0, 1)]
    assert list(tiles.tiles_for_size(256)) == [TileId(1, 0, 1)]


def test_entry_bundles_are_uint16_length_prefixed() -> None:
    data = b"".join(tiles.encode_bundle_entry(e) for e in [b"", b"abc", b"x" * 300])
    assert data[:2] == b"\x00\x00"
    assert data[2:4] == b"\x00\x03"
    assert data[7:9] == (300).to_bytes(2, "big")
    assert tiles.decode_bundle(data) == [b"", b"abc", b"x" * 300]
    with pytest.raises(tiles.TileFormatError) as err:
        tiles.decode_bundle(data[:-1])
    assert err.value.offset == 7
    with pytest.raises(tiles.TileFormatError):
        tiles.encode_bundle_entry(b"x" * 65536)


# -- signed-note -----------------------------------------------------------------------------

SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXm"
    "RKuwHjG1Yu72IneyaQM=\n"
).encode()


def test_the_signed_note_spec_example_verifies() -> None:
    key = note.parse_vkey(SPEC_VKEY)
    assert key.id == 0x530D903A
    assert key.vkey() == SPEC_VKEY
    parsed = note.parse_note(SPEC_NOTE)
    assert parsed.text == b"This is an example message.\n"
    assert note.verified_by(parsed, [key]) == {SPEC_VKEY: 0}


def test_key_id_is_sha256_of_name_newline_type_and_key() -> None:
    key = note.parse_vkey(SPEC_VKEY)
    expect = hashlib.sha256(b"example.com/foo\n\x01" + key.public).digest()[:4]
    assert note.key_id("example.com/foo", 1, key.public) == int.from_bytes(expect, "big")


def test_a_changed_note_text_fails_and_unknown_keys_are_ignored() -> None:
    key = note.parse_vkey(SPEC_VKEY)
    forged = note.parse_note(SPEC_NOTE.replace(b"example message", b"example massage"))
    with pytest.raises(note.NoteError):
        note.verified_by(forged, [key])
    other = note.generate("example.com/other").verifier
    assert note.verified_by(note.parse_note(SPEC_NOTE), [other]) == {}


def test_private_keys_round_trip_in_the_go_note_format() -> None:
    signer = note.generate("log.example/a")
    text = signer.private_text()
    assert text.startswith(f"PRIVATE+KEY+log.example/a+{signer.verifier.id:08x}+")
    again = note.parse_private(text)
    assert again.verifier == signer.verifier
    with pytest.raises(note.NoteError):
        note.parse_private(text.replace("log.example/a", "log.example/b"))


def test_checkpoints_are_origin_size_root_and_sign_as_notes() -> None:
    signer = note.generate("example.com/behind-the-sofa")
    root = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    cp = note.Checkpoint("example.com/behind-the-sofa", 20852163, root)
    assert cp.text() == b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    signed = note.sign_checkpoint(cp, signer)
    got, _ = note.open_checkpoint(signed, signer.verifier)
    assert got == cp
    line = signed.decode().splitlines()[-1]
    assert line.startswith("— example.com/behind-the-sofa ")
    assert base64.b64decode(line.split(" ")[2])[:4] == signer.verifier.id.to_bytes(4, "big")


@pytest.mark.parametrize(
    "text",
    [b"o\n01\nAAAA\n", b"o\n1\nnot base64!\n", b"o\n1\n" + base64.b64encode(b"short") + b"\n", b"o\n1\n"],
)
def test_malformed_checkpoints_are_rejected(text: bytes) -> None:
    with pytest.raises(note.NoteError):
        note.parse_checkpoint(text)


def test_cosignature_v1_signs_header_time_and_checkpoint() -> None:
    witness = note.generate("witness.example/w1", note.SIG_COSIGNATURE_V1)
    text = b"example.com/log\n5\n" + base64.b64encode(b"\x01" * 32) + b"\n"
    line = witness.sign_line(text, timestamp=1679315147)
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == note.key_id("witness.example/w1", 0x04, witness.verifier.public).to_bytes(4, "big")
    assert int.from_bytes(raw[4:12], "big") == 1679315147
    msg = b"cosignature/v1\ntime 1679315147\n" + text
    witness.private.public_key().verify(raw[12:], msg)  # raises if the message format differs
    assert witness.verifier.vkey().split("+", 2)[2] == base64.b64encode(b"\x04" + witness.verifier.public).decode()
    cosigned = note.Note(text, note.parse_note(text + b"\n" + line.encode()).signatures)
    assert note.verified_by(cosigned, [witness.verifier]) == {witness.verifier.vkey(): 1679315147}


@pytest.mark.parametrize(
    "data",
    [b"no blank line\n", b"text\n\nnot a signature\n", b"text\n\n", "t\x01\n\n— a AAAAAAA=\n".encode()],
)
def test_malformed_notes_are_rejected(data: bytes) -> None:
    with pytest.raises(note.NoteError):
        note.parse_note(data)


# -- records -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_record_encoding_is_exactly_rfc8785(content: dict[str, Any]) -> None:
    assert records.canonical(content) == rfc8785.dumps(content)


def test_records_hold_time_kind_writer_and_content_canonically() -> None:
    data = records.encode_record("2026-01-01T00:00:00.000000Z", "alert", "node-1", {"b": 1, "a": [True]})
    assert (
        data == b'{"content":{"a":[true],"b":1},"kind":"alert","time":"2026-01-01T00:00:00.000000Z","writer":"node-1"}'
    )
    assert records.decode_record(data)["writer"] == "node-1"


@pytest.mark.parametrize(
    ("kind", "content", "fragment"),
    [("bogus", {}, "kind"), ("config", [1], "object"), ("config", {"x": 2**60}, "canonical"),
     ("config", {"x": "y" * 70000}, "limit")],
)  # fmt: skip
def test_bad_records_are_refused_with_a_clear_reason(kind: str, content: object, fragment: str) -> None:
    with pytest.raises(records.RecordError, match=fragment):
        records.encode_record("t", kind, "w", content)  # type: ignore[arg-type]


def test_non_canonical_stored_entries_are_detected() -> None:
    with pytest.raises(records.RecordError, match="canonical"):
        records.decode_record(b'{"kind":"alert","content":{},"time":"t","writer":"w"}')


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=5), st.text(), st.text())
def test_whole_records_are_exactly_rfc8785(content: dict[str, Any], time: str, writer: str) -> None:
    try:
        expected = rfc8785.dumps({"content": content, "kind": "config", "time": time, "writer": writer})
    except rfc8785.CanonicalizationError:  # e.g. a float beyond 2**53 that JCS cannot print
        with pytest.raises(records.RecordError):
            records.encode_record(time, "config", writer, content)
        return
    data = records.encode_record(time, "config", writer, content)
    assert data == expected
    assert records.decode_record(data)["writer"] == writer


@pytest.mark.parametrize(
    "content",
    [
        {"t": "04:14:41.123"},
        {"a": "x:1.5", "b": [1, -2]},
        {"f": [1.5, -0.0, 1e21, 1e-7]},
        {"\ue000": 1, "\U0001f600": 2},
    ],
)
def test_tricky_contents_take_the_exact_path_when_needed(content: dict[str, Any]) -> None:
    assert records.canonical(content) == rfc8785.dumps(content)


@pytest.mark.parametrize(
    "stored",
    [
        b'{"content":{"x":1.0},"kind":"alert","time":"t","writer":"w"}',  # JCS prints 1
        b'{"content":{"x":1e21},"kind":"alert","time":"t","writer":"w"}',  # JCS prints 1e+21
        b'{"content":{"x":[0.00001]},"kind":"alert","time":"t","writer":"w"}',  # JCS prints 0.00001
        b'{"content":{"b":1,"a":2},"kind":"alert","time":"t","writer":"w"}',  # keys out of order
        b'{"content":{"a":1,"a":1},"kind":"alert","time":"t","writer":"w"}',  # duplicate key
        b'{"content":{"x":9007199254740993},"kind":"alert","time":"t","writer":"w"}',  # beyond 2**53
    ],
)
def test_the_fast_record_check_never_accepts_what_rfc8785_would_print_otherwise(stored: bytes) -> None:
    try:
        obj = records.decode_record(stored)
    except records.RecordError:
        return
    assert rfc8785.dumps(obj) == stored  # accepted only when it is exactly canonical


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=5), st.text(max_size=30))
def test_decoding_accepts_exactly_the_rfc8785_encoding(content: dict[str, Any], time: str) -> None:
    try:
        data = rfc8785.dumps({"content": content, "kind": "alert", "time": time, "writer": "w"})
    except rfc8785.CanonicalizationError:
        return
    assert records.decode_record(data)["time"] == time
    pretty = orjson.dumps(orjson.loads(data), option=orjson.OPT_SORT_KEYS)
    if pretty != data:  # orjson prints it otherwise (floats): that form must be refused
        with pytest.raises(records.RecordError):
            records.decode_record(pretty)
