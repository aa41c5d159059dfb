"""Tetragon's JSON export mapped to Falco fields (records written in Tetragon's export schema)."""

from __future__ import annotations

from pathlib import Path

import orjson

from webhook.runtime import monitor
from webhook.runtime.engine import Engine
from webhook.runtime.sources import tetragon

PROCESS = {
    "exec_id": "a2luZDox", "pid": 52699, "uid": 0, "cwd": "/app", "binary": "/bin/bash",
    "arguments": "-c \"cat /etc/shadow\"", "flags": "execve clone", "start_time": "2024-05-01T10:00:00.123456789Z",
    "auid": 4294967295, "docker": "f0e1d2c3b4a5968",
    "pod": {"namespace": "serving", "name": "llm-0", "labels": ["k8s:app=llm"],
            "container": {"id": "containerd://f0e1d2c3b4a59687", "name": "server",
                          "image": {"id": "sha256:abc", "name": "ghcr.io/acme/vllm:0.4.2"}}},
}  # fmt: skip
PARENT = {"pid": 52600, "binary": "/usr/bin/python3.11", "arguments": "-m vllm.entrypoints.api_server"}
EXEC = {"process_exec": {"process": PROCESS, "parent": PARENT}, "node_name": "gpu-node-3",
        "time": "2024-05-01T10:00:00.123456789Z"}  # fmt: skip
KPROBE = {
    "process_kprobe": {
        "process": {**PROCESS, "binary": "/usr/bin/cat", "arguments": "/etc/shadow"},
        "parent": PROCESS, "function_name": "security_file_permission",
        "args": [{"file_arg": {"path": "/etc/shadow", "permission": "-rw-r-----"}}, {"int_arg": 4}],
        "return": {"int_arg": 0}, "action": "KPROBE_ACTION_POST",
    },
    "node_name": "gpu-node-3", "time": "2024-05-01T10:00:00.2Z",
}  # fmt: skip
CONNECT = {
    "process_kprobe": {
        "process": {**PROCESS, "binary": "/tmp/xmrig", "arguments": ""}, "function_name": "tcp_connect",
        "args": [{"sock_arg": {"family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP",
                               "saddr": "10.0.0.5", "daddr": "203.0.113.9", "sport": 40001, "dport": 3333}}],
    },
}  # fmt: skip


def test_process_exec_maps_process_parent_pod_and_time() -> None:
    f = tetragon.to_fields(EXEC)
    assert f is not None
    assert f["evt.type"] == "execve"
    assert (f["proc.name"], f["proc.exepath"], f["proc.cmdline"]) == ("bash", "/bin/bash", 'bash -c "cat /etc/shadow"')
    assert (f["proc.pname"], f["proc.aname[1]"], f["proc.ppid"]) == ("python3.11", "python3.11", 52600)
    assert (f["container.id"], f["container.name"]) == ("f0e1d2c3b4a5", "server")
    assert (f["container.image.repository"], f["container.image.tag"]) == ("ghcr.io/acme/vllm", "0.4.2")
    assert (f["k8s.ns.name"], f["k8s.pod.name"]) == ("serving", "llm-0")
    assert f["evt.time"] == 1714557600_123456789
    assert (f["user.uid"], f["user.loginuid"], f["proc.cwd"]) == (0, -1, "/app/")


def test_kprobes_map_files_and_sockets() -> None:
    f = tetragon.to_fields(KPROBE)
    assert f is not None
    assert (f["evt.type"], f["fd.name"], f["fd.directory"], f["fd.filename"]) == (
        "read",
        "/etc/shadow",
        "/etc",
        "shadow",
    )
    c = tetragon.to_fields(CONNECT)
    assert c is not None
    assert (c["evt.type"], c["fd.sport"], c["fd.l4proto"], c["fd.typechar"]) == ("connect", 3333, "tcp", "4")


def test_other_kinds_are_skipped() -> None:
    assert tetragon.to_fields({"process_lsm": {}}) is None


async def test_a_tetragon_export_through_the_monitor(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in (EXEC, KPROBE, CONNECT, {"process_lsm": {}})))
    rules = tmp_path / "r.yaml"
    rules.write_text(
        "- rule: pool\n  desc: d\n  condition: evt.type = connect and fd.sport = 3333\n"
        "  output: pool %fd.name in %k8s.pod.name\n  priority: CRITICAL\n"
    )
    engine = Engine.load([rules])
    src = tetragon.TetragonSource(path)
    snap = await monitor.Monitor(src, engine, []).run()
    assert snap["alerts_by_rule"] == {"pool": 1}
    assert snap["source"] == {"lines": 4, "skipped_kinds": 1}
