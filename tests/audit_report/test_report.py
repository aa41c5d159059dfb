"""Audit reports over a realistic simulated log: numbers checked independently, HTML in Chromium."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from audit_events import write

from webhook import cli

DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
NAMESPACES = ("ml-train", "ml-serve", "web")
USERS = ("alice", "bob", "system:serviceaccount:ci:deployer")
RULES = (
    ("Terminal shell in container", "Notice"),
    ("Read sensitive file untrusted", "Warning"),
    ("Crypto miner pool connection", "Critical"),
)


def simulated_events(seed: int = 11) -> list[tuple[str, str, dict[str, Any]]]:
    """(time, kind, content) for three days of admissions and alerts."""
    rng = random.Random(seed)
    events: list[tuple[str, str, dict[str, Any]]] = []
    for day in DAYS:
        for i in range(120):
            time = f"{day}T{(i * 11) // 60:02d}:{(i * 11) % 60:02d}:00.000000Z"
            ns = rng.choice(NAMESPACES)
            image = f"registry.example.com/{ns}/app:{i % 5}"
            verified = rng.random() < 0.8
            result = rng.choices(["allowed", "warned", "denied"], [6, 2, 2])[0]
            findings = []
            if result == "denied":
                findings.append(
                    {
                        "check": rng.choice(["pss:privileged", "images", "gpu"]),
                        "mode": "enforce",
                        "container": "app",
                        "path": "spec.containers[0]",
                        "message": "bad",
                    }
                )
            if result in ("warned", "denied"):
                findings.append(
                    {
                        "check": "pss:runAsNonRoot",
                        "mode": "warn",
                        "container": "app",
                        "path": "spec.containers[0]",
                        "message": "may run as root",
                    }
                )
            content = {
                "endpoint": "validate",
                "uid": f"{day}-{i}",
                "operation": "CREATE",
                "kind": "Deployment",
                "subresource": "",
                "namespace": ns,
                "name": f"app-{i % 7}",
                "user": rng.choice(USERS),
                "dry_run": i % 17 == 0,
                "allowed": result != "denied",
                "result": result,
                "findings": findings,
                "warnings": [],
                "images": [image],
                "context": {
                    "images": {
                        "images": [
                            {
                                "image": image,
                                "digest": f"sha256:{i:064x}",
                                "verified": verified,
                                "error": False,
                                "reason": "" if verified else "no signature found",
                                "pattern": "registry.example.com/*",
                            }
                        ]
                    },
                    "gpu": {
                        "quotas": [
                            {
                                "quota": "team",
                                "key": ns,
                                "scope": "namespace",
                                "used": str(i % 6),
                                "reserved": "0",
                                "limit": "8",
                                "asked": "1",
                                "left": "1",
                            }
                        ]
                    },
                },
            }
            if i % 40 == 0:
                content["exempt"] = "trusted operator"
            events.append((time, "admission", content))
        for i in range(40):
            time = f"{day}T{(i * 31) // 60:02d}:{(i * 31) % 60:02d}:30.000000Z"
            rule, priority = rng.choice(RULES)
            ns = rng.choice(NAMESPACES)
            events.append(
                (
                    time,
                    "alert",
                    {
                        "time": time,
                        "rule": rule,
                        "priority": priority,
                        "source": "syscall",
                        "output": f"{rule} (x)",
                        "hostname": f"node-{i % 3}",
                        "tags": ["container"],
                        "output_fields": {
                            "k8s.ns.name": ns,
                            "k8s.pod.name": f"app-{i % 7}-abc",
                            "container.image.repository": f"registry.example.com/{ns}/app",
                            "evt.num": i,
                        },
                    },
                )
            )
    events.sort(key=lambda e: e[0])
    return events


@pytest.fixture(scope="module")
def simulated_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[tuple[str, str, dict[str, Any]]]]:
    root = tmp_path_factory.mktemp("report")
    keys = root / "keys"
    assert cli.main(["audit", "keygen", "--out", str(keys), "--name", "test.local/report"]) == 0
    events = simulated_events()
    write(root / "log", events, key=keys / "audit.key", origin="test.local/report", writer="webhook-0", commit_window=0)
    return root / "log", keys / "audit.pub", events


def report(log: Path, pub: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        code = cli.main(["audit", "report", "--log", str(log), "--pub", str(pub), *args])
    return code, out.getvalue()


def test_json_numbers_match_independent_counts(simulated_log: Any) -> None:
    log, pub, events = simulated_log
    code, out = report(log, pub, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    admissions = [c for _, k, c in events if k == "admission"]
    alerts = [c for _, k, c in events if k == "alert"]
    assert doc["admission"]["decisions"] == dict(Counter(c["result"] for c in admissions))
    denied = [c for c in admissions if c["result"] == "denied"]
    assert doc["admission"]["denials_by_namespace"] == dict(Counter(c["namespace"] for c in denied))
    assert doc["admission"]["denials_by_user"] == dict(Counter(c["user"] for c in denied))
    assert doc["admission"]["denials_by_check"] == dict(Counter(c["findings"][0]["check"] for c in denied))
    assert doc["admission"]["dry_runs"] == sum(1 for c in admissions if c["dry_run"])
    assert len(doc["admission"]["exemptions"]) == sum(1 for c in admissions if "exempt" in c)
    assert doc["runtime"]["alerts_by_priority"] == dict(Counter(a["priority"] for a in alerts))
    assert doc["runtime"]["alerts_by_rule"] == dict(Counter(a["rule"] for a in alerts))
    assert doc["runtime"]["alerts_by_node"] == dict(Counter(a["hostname"] for a in alerts))
    verified = Counter(
        "verified" if c["context"]["images"]["images"][0]["verified"] else "unsigned" for c in admissions
    )
    assert doc["images"]["by_registry"] == {"registry.example.com": dict(verified)}
    (integrity,) = doc["integrity"]
    assert integrity["verified"] is True
    assert integrity["tree_size"] == len(events)
    # every evidence item can be proved with the command it names
    first = doc["admission"]["denials"][0]
    assert first["prove"] == f"portcullis audit prove --log {log} --index {first['index']}"
    linked = [a for a in doc["runtime"]["alerts"] if "admission" in a["detail"]]
    assert linked, "alerts must link to the admission record of the alerting workload's image"


def test_window_and_namespace_filters(simulated_log: Any) -> None:
    log, pub, events = simulated_log
    _, out = report(log, pub, "--format", "json", "--from", "2026-11-02", "--to", "2026-11-02", "--namespace", "web")
    doc = json.loads(out)
    expected = Counter(
        c["result"] for t, k, c in events if k == "admission" and t.startswith("2026-11-02") and c["namespace"] == "web"
    )
    assert doc["admission"]["decisions"] == dict(expected)
    assert set(doc["admission"]["decisions_by_day"]) == {"2026-11-02"}


def test_csv_is_long_format_with_the_same_numbers(simulated_log: Any) -> None:
    log, pub, events = simulated_log
    _, out = report(log, pub, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    results = {r["key"]: int(r["count"]) for r in rows if r["dimension"] == "result"}
    assert results == dict(Counter(c["result"] for _, k, c in events if k == "admission"))


def test_markdown_has_every_section(simulated_log: Any) -> None:
    log, pub, _ = simulated_log
    _, out = report(log, pub, "--format", "md")
    for heading in ("## Integrity", "## Admission", "## Images", "## Runtime alerts", "## Evidence"):
        assert heading in out


def test_tampered_log_is_reported_as_not_verified(simulated_log: Any, tmp_path: Path) -> None:
    log, pub, _ = simulated_log
    copy = tmp_path / "log"
    shutil.copytree(log, copy)
    bundle = copy / "tile" / "entries" / "000"
    bundle.chmod(0o644)
    data = bytearray(bundle.read_bytes())
    data[100] ^= 1
    bundle.write_bytes(bytes(data))
    code, out = report(copy, pub, "--format", "json")
    assert code == 1
    assert json.loads(out)["integrity"][0]["verified"] is False


@pytest.mark.chromium
@pytest.mark.slow
def test_html_renders_in_headless_chromium(simulated_log: Any, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    log, pub, _ = simulated_log
    page = tmp_path / "report.html"
    code, _ = report(log, pub, "--format", "html", "--output", str(page))
    assert code == 0
    text = page.read_text()
    for reference in ('src="http', 'href="http', "url(http", "@import"):  # self-contained: nothing fetched
        assert reference not in text
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for section in ("summary", "integrity", "admission", "images", "gpu", "runtime"):
        assert f'id="{section}"' in dom
    for chart in ("chart-decisions", "chart-alerts", "chart-gpu"):
        assert f'id="{chart}"' in dom
    assert dom.count("<svg") >= 3
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2400)
    colors = image.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 50, "the screenshot looks blank"
    # a phone-width render lays out too (no horizontal overflow of the page body)
    phone = tmp_path / "phone.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={phone}", "--window-size=390,2000", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert Image.open(phone).size == (390, 2000)
