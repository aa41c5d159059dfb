"""NamespaceDirectory against the local API server (see ``kubeapi.py``): list, watch, relist."""

from __future__ import annotations

from typing import Any

from webhook.kube.namespaces import NamespaceDirectory


async def test_directory_lists_then_follows_label_changes(
    kube: Any, api: Any, kube_config: Any, make_namespace: Any, eventually: Any
) -> None:
    kube.put("namespaces", make_namespace("ml", team="vision"))
    kube.put("namespaces", make_namespace("web"))
    directory = NamespaceDirectory(api, kube_config)
    heard: list[tuple[str, dict[str, str]]] = []
    directory.subscribe(lambda name, labels: heard.append((name, dict(labels))))
    assert not directory.ready()
    await directory.start()
    try:
        assert await directory.wait_ready(10)
        assert directory.labels("ml") == {"team": "vision"}
        assert directory.labels("web") == {}
        assert directory.labels("missing") is None
        kube.put("namespaces", make_namespace("ml", team="speech"))
        await eventually(lambda: directory.labels("ml") == {"team": "speech"})
        kube.delete("namespaces", "", "web")
        await eventually(lambda: directory.labels("web") is None)
        assert ("ml", {"team": "speech"}) in heard
    finally:
        await directory.close()


async def test_directory_pages_through_a_large_list(kube: Any, api: Any, kube_config: Any, make_namespace: Any) -> None:
    for i in range(120):  # page size is 50 in the fixture: three pages with continue tokens
        kube.put("namespaces", make_namespace(f"ns-{i:03d}", team=f"t{i % 3}"))
    directory = NamespaceDirectory(api, kube_config)
    await directory.start()
    try:
        assert await directory.wait_ready(10)
        assert len(directory) == 120
        assert directory.labels("ns-119") == {"team": "t2"}
        assert sum("continue=" in r for r in kube.requests) == 2
    finally:
        await directory.close()
