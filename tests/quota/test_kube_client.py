"""Building the API client from ``kubernetes:`` config, and errors from the local API server
(``kubeapi.py``) turned into ``ApiServerError`` naming what was asked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from webhook import errors
from webhook.config.kubernetes import KubernetesConfig
from webhook.core.deadline import Deadline
from webhook.kube import client
from webhook.kube.namespaces import NamespaceDirectory


def test_mode_off_gives_no_client() -> None:
    assert client.build(KubernetesConfig(mode="off")) is None


def test_auto_without_cluster_or_kubeconfig_gives_no_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    assert client.build(KubernetesConfig()) is None


def test_explicit_modes_that_cannot_work_name_what_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(errors.ConfigError, match=r"kubernetes\.kubeconfig: .*absent does not exist"):
        client.build(KubernetesConfig(mode="kubeconfig", kubeconfig=str(tmp_path / "absent")))
    with pytest.raises(errors.ConfigError, match=r"kubernetes\.mode incluster: cannot load"):
        client.build(KubernetesConfig(mode="incluster"))


def test_bad_kubernetes_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="request_timeout"):
        KubernetesConfig(request_timeout=0)


async def test_kubeconfig_mode_reaches_the_server_it_names(
    kube: Any, tmp_path: Path, make_namespace: Any, kube_config: KubernetesConfig
) -> None:
    kube.put("namespaces", make_namespace("ml", team="vision"))
    path = tmp_path / "config"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters: [{{name: local, cluster: {{server: '{kube.url}'}}}}]\n"
        "users: [{name: me, user: {token: not-checked}}]\n"
        "contexts: [{name: test, context: {cluster: local, user: me}}]\n"
    )
    api = client.build(KubernetesConfig(mode="kubeconfig", kubeconfig=str(path)))
    assert api is not None
    try:
        directory = NamespaceDirectory(api, kube_config)
        await directory.start()
        assert await directory.wait_ready(10)
        assert directory.labels("ml") == {"team": "vision"}
        await directory.close()
    finally:
        await asyncio.to_thread(api.close)


async def test_status_errors_and_unreachable_servers_become_api_server_errors(kube: Any, api: Any) -> None:
    core = kubernetes.client.CoreV1Api(api)
    with pytest.raises(
        client.ApiStatusError, match='read cm: API server answered 404: configmaps "x" not found'
    ) as info:
        await client.call(Deadline.after(5), "read cm", core.read_namespaced_config_map, "x", "ns", _request_timeout=2)
    assert info.value.status == 404
    await kube.stop()
    with pytest.raises(errors.ApiServerError, match="read cm: API server unreachable"):
        await client.call(Deadline.after(5), "read cm", core.read_namespaced_config_map, "x", "ns", _request_timeout=2)


async def test_expired_continue_token_restarts_the_list(
    kube: Any, api: Any, kube_config: KubernetesConfig, make_namespace: Any
) -> None:
    for i in range(120):
        kube.put("namespaces", make_namespace(f"ns-{i:03d}"))
    kube.expire_next_continue = True
    directory = NamespaceDirectory(api, kube_config)
    await directory.start()
    try:
        assert await directory.wait_ready(10)
        assert len(directory) == 120
        assert directory.reflector.lists == 1
        first_pages = [r for r in kube.requests if r.startswith("GET /api/v1/namespaces?limit=")]
        assert len(first_pages) == 2  # the list began again after 410 Expired
    finally:
        await directory.close()
