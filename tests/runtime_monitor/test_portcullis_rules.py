"""Each rule of rules/portcullis_rules.yaml fires on its trigger event and not on its near miss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook.runtime.engine import Engine

RULES = Path(__file__).resolve().parents[2] / "rules" / "portcullis_rules.yaml"


def opened(name: str, *, write: bool = False, proc: str = "cat", **extra: Any) -> dict[str, Any]:
    head, _, tail = name.rpartition("/")
    return {
        "evt.type": "openat", "evt.dir": "<", "evt.num": 1, "evt.rawres": 3, "fd.num": 3,
        "evt.is_open_read": not write, "evt.is_open_write": write, "fd.typechar": "f", "fd.name": name,
        "fd.directory": head or "/", "fd.filename": tail, "proc.name": proc, "proc.cmdline": f"{proc} {name}",
        "proc.pname": "bash", "user.name": "root", "container.id": "host", **extra,
    }  # fmt: skip


def spawned(name: str, parent: str, container: str = "host") -> dict[str, Any]:
    return {
        "evt.type": "execve", "evt.dir": "<", "evt.num": 1, "evt.rawres": 0, "proc.name": name,
        "proc.cmdline": name, "proc.pname": parent, "proc.aname[1]": parent, "proc.aname[2]": "containerd-shim",
        "container.id": container,
    }  # fmt: skip


def connected(port: int) -> dict[str, Any]:
    return {
        "evt.type": "connect", "evt.dir": "<", "evt.num": 1, "evt.rawres": 0, "fd.typechar": "4",
        "fd.type": "ipv4", "fd.cip": "10.0.0.2", "fd.cport": 40000, "fd.sip": "203.0.113.9", "fd.sport": port,
        "fd.name": f"10.0.0.2:40000->203.0.113.9:{port}", "proc.name": "xmrig", "container.id": "0123456789ab",
    }  # fmt: skip


# rule → (event that must fire it, near miss that must not)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "Read of shadow password file": (opened("/etc/shadow"), opened("/etc/shadow", proc="sshd")),
    "Shell spawned by a web or model server": (spawned("bash", "nginx"), spawned("bash", "sshd")),
    "Outbound connection to a crypto-mining pool port": (connected(14444), connected(443)),
    "Write below binary directory": (
        opened("/usr/bin/ls", write=True, proc="sh"),
        opened("/usr/bin/ls", write=True, proc="dpkg"),
    ),
    "Model weights read by unexpected process": (
        opened("/models/llama/model-00001.safetensors", proc="curl"),
        opened("/models/llama/model-00001.safetensors", proc="vllm"),
    ),
    "Write to NVIDIA device from non-GPU process": (
        opened("/dev/nvidia0", write=True, proc="dd"),
        opened("/dev/nvidia0", write=True, proc="nvidia-smi"),
    ),
    "Package manager run in a container": (
        spawned("apt-get", "bash", container="0123456789ab"),
        spawned("apt-get", "bash", container="host"),
    ),
    "Process attached with ptrace": (
        {
            "evt.type": "ptrace",
            "evt.dir": "<",
            "evt.rawres": 0,
            "evt.arg.request": "PTRACE_ATTACH",
            "evt.arg.pid": "4242",
            "proc.name": "gdb",
        },
        {
            "evt.type": "ptrace",
            "evt.dir": "<",
            "evt.rawres": 0,
            "evt.arg.request": "PTRACE_TRACEME",
            "proc.name": "strace",
        },
    ),
    "BPF program loaded by unexpected process": (
        {"evt.type": "bpf", "evt.dir": "<", "evt.rawres": 3, "evt.arg.cmd": "BPF_PROG_LOAD", "proc.name": "loader"},
        {"evt.type": "bpf", "evt.dir": "<", "evt.rawres": 3, "evt.arg.cmd": "BPF_PROG_LOAD", "proc.name": "bpftrace"},
    ),
    "Kernel module loaded": (
        {"evt.type": "finit_module", "evt.dir": "<", "evt.rawres": 0, "proc.name": "python3"},
        {"evt.type": "finit_module", "evt.dir": "<", "evt.rawres": 0, "proc.name": "modprobe"},
    ),
    "Mount inside a container": (
        {"evt.type": "mount", "evt.dir": "<", "evt.rawres": 0, "evt.arg.dir": "/host", "container.id": "0123456789ab"},
        {"evt.type": "mount", "evt.dir": "<", "evt.rawres": 0, "evt.arg.dir": "/mnt", "container.id": "host"},
    ),
    "Fileless execution via memfd": (
        {**spawned("3", "python3"), "proc.exepath": "/proc/self/fd/3"},
        {**spawned("runc", "runc"), "proc.exepath": "/proc/self/fd/5"},
    ),
}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load([RULES])


def test_every_shipped_rule_has_a_trigger_case() -> None:
    names = {item["rule"] for item in yaml.safe_load(RULES.read_text()) if "rule" in item}
    assert names == set(CASES)


def test_the_rules_load_without_warnings(engine: Engine) -> None:
    assert engine.warnings == []


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_fires_on_its_trigger_only(engine: Engine, rule: str) -> None:
    trigger, near_miss = CASES[rule]
    assert [a.rule for a in engine.process(trigger)] == [rule]
    assert rule not in [a.rule for a in engine.process(near_miss)]
