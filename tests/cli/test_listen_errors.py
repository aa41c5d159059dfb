"""A port already in use is the user's to fix (exit 2, naming the setting), for every command that
listens: the monitor's metrics endpoint and the witness (the webhook's own is in tests/admission)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook import cli


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


def test_monitor_metrics_port_in_use_is_a_clean_error(
    busy_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("")
    code = cli.main(
        ["monitor", "--source", "jsonl", "--input", str(events), "--metrics-listen", f"127.0.0.1:{busy_port}"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{busy_port}" in err
    assert "--metrics-listen" in err
    assert "internal error" not in err


def test_witness_port_in_use_is_a_clean_error(
    busy_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["audit", "keygen", "--name", "witness.example", "--witness", "--out", str(tmp_path / "w")]) == 0
    assert cli.main(["audit", "keygen", "--name", "log.example", "--out", str(tmp_path / "l")]) == 0
    capsys.readouterr()
    secret, public = tmp_path / "w" / "witness.key", tmp_path / "l" / "audit.pub"
    code = cli.main(
        [
            "audit", "witness", "--key", str(secret), "--log-key", str(public),
            "--state", str(tmp_path / "state"), "--listen", f"127.0.0.1:{busy_port}",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"cannot listen on 127.0.0.1:{busy_port}" in err
    assert "internal error" not in err
