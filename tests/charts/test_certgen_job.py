"""The chart's certgen hook Jobs run ``portcullis certs`` with the arguments the chart renders,
and stay idempotent: a retried container (``restartPolicy: OnFailure`` keeps the emptyDir, so
the files of the first try are still in ``--out``) is not refused the way a person replacing a
CA by hand is, and a Secret still valid long enough is kept.

No Kubernetes API server runs here: the official client talks to a small local aiohttp server on
127.0.0.1 that speaks the real wire format for the calls the Job makes (Secret get/create/
replace, webhook configuration get/patch), with ``Status`` bodies for 404s.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from aiohttp import web

from webhook import cli

from .test_chart import CHART, FULLNAME, NAMESPACE, find, pod_spec, render

pytestmark = pytest.mark.helm


class SecretApi:
    """Secrets and webhook configurations in memory, served on 127.0.0.1 from its own thread."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.writes: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> SecretApi:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self._get)
        app.router.add_post("/api/v1/namespaces/{ns}/secrets", self._create)
        app.router.add_put("/api/v1/namespaces/{ns}/secrets/{name}", self._replace)
        base = "/apis/admissionregistration.k8s.io/v1/{kind}/{name}"
        app.router.add_get(base, self._get_webhook)
        app.router.add_patch(base, self._patch_webhook)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self._runner = web.AppRunner(app)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        async def down() -> None:
            assert self._runner is not None
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @staticmethod
    def _not_found(what: str) -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": f"{what} not found", "reason": "NotFound", "code": 404}  # fmt: skip
        return web.json_response(body, status=404)

    async def _get(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.secrets:
            return self._not_found(f'secrets "{key[1]}"')
        return web.json_response(self.secrets[key])

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.secrets[(request.match_info["ns"], body["metadata"]["name"])] = body
        self.writes.append("create")
        return web.json_response(body, status=201)

    async def _replace(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.secrets[(request.match_info["ns"], request.match_info["name"])] = body
        self.writes.append("replace")
        return web.json_response(body)

    async def _get_webhook(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.match_info["kind"] != "validatingwebhookconfigurations" or name not in self.webhooks:
            return self._not_found(name)
        return web.json_response(self.webhooks[name])

    async def _patch_webhook(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        patch = json.loads(await request.read())
        current = self.webhooks[name]
        for hook in patch["webhooks"]:
            for existing in current["webhooks"]:
                if existing["name"] == hook["name"]:
                    existing["clientConfig"].update(hook["clientConfig"])
        self.writes.append(f"patch {name}")
        return web.json_response(current)


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretApi]:
    with SecretApi() as server:
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}],
            "users": [{"name": "job", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "job"}}],
            "current-context": "local",
        }
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig), encoding="utf-8")
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield server


def _job_args() -> dict[str, list[str]]:
    with helm.Chart.load(CHART) as chart:
        objects = render(chart)
    return {j["metadata"]["name"]: pod_spec(j)["containers"][0]["args"] for j in find(objects, "Job")}


def _with_out(args: list[str], out: Path) -> list[str]:
    args = list(args)
    args[args.index("--out") + 1] = str(out)  # the Job's emptyDir
    return args


def test_the_hook_jobs_publish_then_keep_the_certificate_on_a_retry(api: SecretApi, tmp_path: Path) -> None:
    jobs = _job_args()
    pre, post = jobs[f"{FULLNAME}-certgen"], jobs[f"{FULLNAME}-certgen-patch"]
    out = tmp_path / "emptydir"
    assert cli.main(_with_out(pre, out)) == 0
    assert api.writes == ["create"]
    (secret,) = api.secrets.values()
    assert base64.b64decode(secret["data"]["tls.crt"]) == (out / "tls.crt").read_bytes()
    # The container is retried in the same pod: the files are still there, and that is fine.
    assert cli.main(_with_out(pre, out)) == 0
    assert api.writes == ["create"]  # kept, not re-issued and not refused
    validating = post[post.index("--k8s-webhooks") + 1].split(",")[0]
    api.webhooks[validating] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": validating},
        "webhooks": [
            {
                "name": "v.portcullis.dev",
                "clientConfig": {"service": {"name": "s", "namespace": NAMESPACE}},
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
            }
        ],
    }
    assert cli.main(_with_out(post, tmp_path / "other-emptydir")) == 0
    assert api.writes == ["create", f"patch {validating}"]
    bundle = api.webhooks[validating]["webhooks"][0]["clientConfig"]["caBundle"]
    assert base64.b64decode(bundle) == base64.b64decode(secret["data"]["ca.crt"])
