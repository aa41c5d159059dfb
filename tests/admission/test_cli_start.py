"""Starting the webhook from the command line: a port already in use and a replaced CA are the
user's to fix (exit 2, a message naming what), ``serve --dev`` stays on loopback, and the
throw-away key of ``serve --dev`` / ``demo`` never outlives the process (also on SIGTERM).

Everything runs for real: real sockets on 127.0.0.1, real TLS, real subprocesses and signals.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dev_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Throw-away certificates go under this test's own directory, not the shared /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _dev_dirs(parent: Path) -> list[Path]:
    return sorted(parent.glob("portcullis-dev-*"))


def test_serve_on_a_port_in_use_is_a_clean_error(
    busy_port: int, dev_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--dev", "--listen", f"127.0.0.1:{busy_port}"]) == 2
    err = capsys.readouterr().err
    assert f"portcullis: error: cannot listen on 127.0.0.1:{busy_port}: Address already in use" in err
    assert "choose another port with --listen" in err
    assert "internal error" not in err
    assert _dev_dirs(dev_tmp) == []  # the key went with the failed start


def test_serve_with_certificates_on_a_port_in_use_is_a_clean_error(
    busy_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["certs", "--dns", "localhost", "--out", str(tmp_path / "tls")]) == 0
    argv = ["serve", "--listen", f"127.0.0.1:{busy_port}", "--tls-cert", str(tmp_path / "tls" / "tls.crt")]
    assert cli.main([*argv, "--tls-key", str(tmp_path / "tls" / "tls.key")]) == 2
    assert "Address already in use" in capsys.readouterr().err


def test_demo_with_its_health_port_in_use_is_a_clean_error(
    busy_port: int, dev_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = dev_tmp / "c.yaml"
    config.write_text(f"server: {{health_listen: '127.0.0.1:{busy_port}'}}\n", encoding="utf-8")
    assert cli.main(["demo", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{busy_port}: Address already in use" in err
    assert "server.health_listen" in err
    assert _dev_dirs(dev_tmp) == []


def test_demo_judges_the_examples_and_leaves_no_key_behind(dev_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "ALLOWED Pod/" in out
    assert "DENIED  Pod/" in out
    assert "malformed review -> HTTP 400" in out
    assert _dev_dirs(dev_tmp) == []


def _start_dev_server(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "webhook", "serve", "--dev", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stderr is not None
    seen = ""
    for line in proc.stderr:  # ends when the process does
        seen += line
        if "listening on" in line:
            return proc, seen
    proc.wait(timeout=30)
    pytest.fail(f"serve --dev did not start: {seen}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_dev_listens_on_loopback_and_removes_its_key_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "c.yaml"
    config.write_text(f"server: {{listen: '0.0.0.0:{port}'}}\n", encoding="utf-8")
    proc, seen = _start_dev_server(tmp_path, "--config", str(config))
    try:
        assert f"listening on https://127.0.0.1:{port}" in seen  # the config's port, loopback only
        (key,) = tmp_path.glob("portcullis-dev-*/tls.key")
        assert f"CA at {key.parent / 'ca.crt'} (removed on exit)" in seen
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert _dev_dirs(tmp_path) == []


def test_serve_dev_listens_where_listen_says(tmp_path: Path) -> None:
    port = _free_port()
    proc, seen = _start_dev_server(tmp_path, "--listen", f"localhost:{port}")
    try:
        assert f"listening on https://localhost:{port}" in seen
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert _dev_dirs(tmp_path) == []


def test_certs_refuses_to_replace_a_ca_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["certs", "--dns", "portcullis.portcullis-system", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    first = {name: (tmp_path / name).read_bytes() for name in ("ca.crt", "tls.crt", "tls.key")}
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ca.crt'} already exists" in err
    assert "caBundle" in err
    assert "--force" in err
    assert {name: (tmp_path / name).read_bytes() for name in first} == first  # untouched
    assert cli.main([*argv, "--force"]) == 0
    assert (tmp_path / "ca.crt").read_bytes() != first["ca.crt"]


def test_certs_refuses_when_only_the_key_is_there(tmp_path: Path) -> None:
    (tmp_path / "tls.key").write_text("a key someone relies on\n")
    assert cli.main(["certs", "--dns", "a.b", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "tls.key").read_text() == "a key someone relies on\n"
