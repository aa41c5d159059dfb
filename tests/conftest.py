"""Fixtures and settings every test folder shares.

- Hypothesis: one profile for the whole suite, derandomized and without an example database, so
  CI, a fresh virtualenv and a developer's machine draw the same examples from the same
  hypothesis version (pinned in ``pyproject.toml``). ``PORTCULLIS_FUZZ=deep`` switches to fresh
  randomness (and the fuzz tests to many more examples) for a hunt.
- ``docker_registry``: a real docker-registry (Debian's ``docker-registry``, distribution 2.8)
  on a free loopback port, one per session; each folder wraps its own pusher around the host.
- ``serve``: aiohttp apps on loopback (stub registries, token servers), stopped after the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import settings

DEEP = os.environ.get("PORTCULLIS_FUZZ") == "deep"
settings.register_profile("portcullis", derandomize=True, database=None, print_blob=True)
settings.register_profile("deep", derandomize=False, database=None, print_blob=True)
settings.load_profile("deep" if DEEP else "portcullis")

REGISTRY_BINARY = "/usr/bin/docker-registry"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_registry(root: Path) -> Iterator[str]:
    """A docker-registry storing under ``root``; yields ``host:port``; killed when the block ends."""
    if shutil.which(REGISTRY_BINARY) is None:
        pytest.skip(f"{REGISTRY_BINARY} is not installed (apt-get install docker-registry)")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        [REGISTRY_BINARY, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    host = f"127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://{host}/v2/", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"docker-registry exited with {proc.returncode}")
                time.sleep(0.05)
        else:
            pytest.fail("docker-registry did not start within 10 s")
        yield host
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def docker_registry_factory() -> Callable[[Path], contextlib.AbstractContextManager[str]]:
    """``with docker_registry_factory(root) as host:`` a registry of the test's own (to kill it)."""
    return running_registry


@pytest.fixture(scope="session")
def docker_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of the session's shared docker-registry on loopback."""
    with running_registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start aiohttp apps on loopback; returns ``host:port``; all stopped at the end."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()
