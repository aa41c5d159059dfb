"""The server's TLS context, reloaded in place when the certificate files change.

Kubernetes rotates mounted secrets by swapping a symlink; we poll the files' identity and load
the new pair into the *same* ``SSLContext``: new handshakes get the new certificate, open
connections keep theirs, nothing is dropped. A pair that does not load (half-rotated, key and
certificate mismatched) is ignored with an error until a good one appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from pathlib import Path

from webhook import errors

log = logging.getLogger("portcullis.tls")


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+; with ``client_ca``, clients must present a certificate chaining to it (mTLS:
    the apiserver authenticates itself to webhooks through its AdmissionConfiguration)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError(f"cannot load TLS certificate {cert} with key {key}: {exc}") from exc
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise errors.ConfigError(f"cannot load the client CA bundle {client_ca}: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class ReloadingContext:
    """Owns the live context and the task that watches the files."""

    def __init__(self, cert: Path, key: Path, *, interval: float = 5.0, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.interval, self.client_ca = cert, key, interval, client_ca
        self.context = server_context(cert, key, client_ca)
        self._fingerprint = self._read_fingerprint()
        self.reloads = 0
        self._task: asyncio.Task[None] | None = None

    def _read_fingerprint(self) -> bytes:
        digest = hashlib.sha256()
        for path in (self.cert, self.key, self.client_ca):
            if path is not None:
                digest.update(path.read_bytes())
        return digest.digest()

    def check(self) -> bool:
        """Reload if the files changed and the new pair is valid; True when reloaded."""
        try:
            fingerprint = self._read_fingerprint()
        except OSError as exc:
            log.error("TLS files unreadable, keeping the current certificate: %s", exc)
            return False
        if fingerprint == self._fingerprint:
            return False
        try:
            server_context(self.cert, self.key, self.client_ca)  # validate before touching the live context
            self.context.load_cert_chain(self.cert, self.key)
            if self.client_ca is not None:
                self.context.load_verify_locations(cafile=str(self.client_ca))
        except (errors.ConfigError, ssl.SSLError, OSError) as exc:
            log.error("new TLS certificate does not load, keeping the current one: %s", exc)
            return False
        self._fingerprint = fingerprint
        self.reloads += 1
        log.info("reloaded TLS certificate %s", self.cert)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            # On the loop thread: OpenSSL contexts must not change under a concurrent handshake.
            self.check()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
