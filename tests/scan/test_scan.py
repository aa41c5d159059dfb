"""Background scans against the local wire-format API server (``kubeapi.py``; no Kubernetes API
server can run here): the PolicyReports' exact content, validated against the chart's CRD schema,
their updates when objects are fixed or deleted, 409 retries, and that only the Lease holder scans."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from webhook import cli, errors
from webhook import config as config_mod
from webhook.admission import service
from webhook.scan import commands as scan_commands
from webhook.scan import loop as scan_loop
from webhook.scan.api import RestApi
from webhook.scan.metrics import ScanMetrics

from .conftest import configmap, crd, deployment, eventually, namespace, pod

NOW = 1_700_000_000.0
STAMP = {"seconds": 1_700_000_000, "nanos": 0}
MANAGED = {"app.kubernetes.io/managed-by": "portcullis"}
PRIVILEGED = (
    "[pss:privileged] app: privileged containers are forbidden; remove securityContext.privileged or set it "
    "to false [baseline:latest] (spec.containers[0].securityContext.privileged)"
)
HOST_NETWORK = (
    "[pss:hostNamespaces] the pod shares the host's network namespace; remove hostNetwork or set it to false "
    "[baseline:latest] (spec.template.spec.hostNetwork)"
)
ESCALATION = (
    "[pss:allowPrivilegeEscalation] app: privilege escalation is not disabled; set "
    "securityContext.allowPrivilegeEscalation to false [restricted:latest] "
    "(spec.containers[0].securityContext.allowPrivilegeEscalation)"
)
# sprintf("%v") of a set prints as OPA prints it (policy.native fixes rego-cpp's escaped quotes)
NO_OWNER = '[rego] K8sRequiredLabels/configmaps-need-owner: you must provide labels: {"owner"}'


def seed(kube: Any) -> None:
    for ns in ("team-a", "team-b", "portcullis"):
        kube.put("namespaces", namespace(ns))
    kube.put("pods", pod("good", "team-a"))
    kube.put("pods", pod("root", "team-a", privileged=True))
    kube.put("pods", pod("loose", "team-b", allowPrivilegeEscalation=True))
    kube.put("deployments.apps", deployment("web", "team-b", hostNetwork=True))
    kube.put("deployments.apps", deployment("api", "team-b"))
    kube.put("configmaps", configmap("owned", "team-a", owner="alice"))
    kube.put("configmaps", configmap("orphan", "team-a"))


def result(
    kind: str, name: str, namespace: str, policy: str, outcome: str, message: str = "no violations"
) -> dict[str, Any]:
    api_version = "apps/v1" if kind == "Deployment" else "v1"
    entry: dict[str, Any] = {
        "source": "portcullis",
        "policy": policy,
        "category": {"privilege": "Pod Security", "rego": "Custom Policy"}[policy],
        "result": outcome,
        "scored": True,
        "message": message,
        "resources": [
            {
                "apiVersion": api_version,
                "kind": kind,
                "name": name,
                "uid": f"uid-{kind.lower()}s-{namespace}-{name}",
                "namespace": namespace,
            }
        ],
        "timestamp": STAMP,
    }
    if outcome != "pass":
        entry["severity"] = {"fail": "high", "warn": "medium"}[outcome]
        entry["properties"] = {"violations": "1"}
    return entry


def report(namespace: str, results: list[dict[str, Any]], **summary: int) -> dict[str, Any]:
    counts = {k: summary.get(k, 0) for k in ("pass", "fail", "warn", "error", "skip")}
    return {
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {"name": "portcullis", "namespace": namespace, "labels": MANAGED},
        "summary": counts,
        "results": results,
    }


TEAM_A = report(
    "team-a",
    [
        result("ConfigMap", "orphan", "team-a", "rego", "fail", NO_OWNER),
        result("ConfigMap", "owned", "team-a", "rego", "pass"),
        result("Pod", "good", "team-a", "privilege", "pass"),
        result("Pod", "root", "team-a", "privilege", "fail", PRIVILEGED),
    ],
    **{"pass": 2, "fail": 2},
)
TEAM_B = report(
    "team-b",
    [
        result("Deployment", "api", "team-b", "privilege", "pass"),
        # a pod template breaking the enforce level warns, as Pod Security Admission does
        # (privilege.workload_templates: enforce makes it fail)
        result("Deployment", "web", "team-b", "privilege", "warn", HOST_NETWORK.replace("baseline:", "restricted:")),
        result("Pod", "loose", "team-b", "privilege", "warn", ESCALATION),
    ],
    **{"pass": 1, "warn": 2},
)


def stored(kube: Any, namespace: str, name: str = "portcullis") -> dict[str, Any] | None:
    """A report as the server stores it, without server-set metadata."""
    obj = kube.get("policyreports.wgpolicyk8s.io", namespace, name)
    if obj is None:
        return None
    obj["metadata"] = {k: v for k, v in obj["metadata"].items() if k in ("name", "namespace", "labels")}
    return dict(obj)


def reports_in(kube: Any) -> list[tuple[str, str]]:
    reports = ("policyreports.wgpolicyk8s.io", "clusterpolicyreports.wgpolicyk8s.io")
    return sorted((k[1], k[2]) for k in kube.objects if k[0] in reports)


def without_time(report_: dict[str, Any] | None) -> dict[str, Any]:
    assert report_ is not None
    for entry in report_["results"]:
        stamp = entry.pop("timestamp")
        assert isinstance(stamp["seconds"], int)
        assert 0 <= stamp["nanos"] < 10**9
    return report_


def validate(report_: dict[str, Any]) -> None:
    plural = "policyreports" if report_["kind"] == "PolicyReport" else "clusterpolicyreports"
    jsonschema.validate(report_, crd(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


async def test_one_shot_scan_writes_the_exact_reports_and_they_validate_against_the_crd(
    kube: Any, scan_config: dict[str, Any]
) -> None:
    seed(kube)
    summary = await scan_commands.run(config_mod.parse(scan_config))
    assert summary == {
        "objects": 7,
        "kinds": [
            "Pod",
            "ReplicationController",
            "PodTemplate",
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "CronJob",
            "ConfigMap",
        ],
        "not_scanned": [],
        "namespaces": {
            "team-a": {"pass": 2, "fail": 2, "warn": 0, "error": 0, "skip": 0},
            "team-b": {"pass": 1, "fail": 0, "warn": 2, "error": 0, "skip": 0},
        },
        "summary": {"pass": 3, "fail": 2, "warn": 2, "error": 0, "skip": 0},
    }
    assert reports_in(kube) == [("team-a", "portcullis"), ("team-b", "portcullis")]
    for ns, expected in (("team-a", TEAM_A), ("team-b", TEAM_B)):
        got = stored(kube, ns)
        assert got is not None
        validate(got)
        assert without_time(got) == without_time(copy.deepcopy(expected))
    # the lists were paged (list_page_size 2 with 7 objects of 2 kinds)
    assert any("continue=" in r for r in kube.requests)


@contextlib.asynccontextmanager
async def replica(cfg: config_mod.Config, identity: str) -> AsyncIterator[tuple[ScanMetrics, Any]]:
    """One ``serve`` replica's scan loop (its own API client, pipeline and lease campaign)."""
    services = service.cluster_services(cfg)
    pipeline = service.build_pipeline(cfg, services)
    await pipeline.start()
    rest = RestApi.build(cfg.kubernetes)
    settings = cfg.scan
    import msgspec

    settings = msgspec.structs.replace(settings, identity=identity)
    metrics = ScanMetrics()
    campaign = scan_loop.elector(rest, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(
        scan_loop.run(
            pipeline,
            rest,
            cfg.kubernetes,
            settings,
            stop,
            metrics=metrics,
            campaign=campaign,
            clock=lambda: NOW,
            namespaces=services.namespaces,
        )
    )
    try:
        yield metrics, campaign
    finally:
        stop.set()
        await task
        await pipeline.close()
        await asyncio.to_thread(rest.close)
        await asyncio.to_thread(services.kube_api.close)


def holder(kube: Any) -> str:
    lease = kube.get("leases.coordination.k8s.io", "portcullis", "portcullis-scan")
    return str(lease["spec"]["holderIdentity"]) if lease else ""


async def test_only_the_leader_scans_and_reports_follow_fixes_and_deletions(
    kube: Any, scan_config: dict[str, Any]
) -> None:
    seed(kube)
    cfg = config_mod.parse(scan_config)
    lease_reads = "GET /apis/coordination.k8s.io/v1/namespaces/portcullis/leases/portcullis-scan"
    async with contextlib.AsyncExitStack() as outer:
        first = contextlib.AsyncExitStack()
        metrics_a, campaign_a = await first.enter_async_context(replica(cfg, "replica-a"))
        await eventually(lambda: stored(kube, "team-b") == TEAM_B and stored(kube, "team-a") == TEAM_A)
        metrics_b, campaign_b = await outer.enter_async_context(replica(cfg, "replica-b"))
        reads = kube.requests.count(lease_reads)
        await eventually(lambda: kube.requests.count(lease_reads) > reads + 6)  # both campaigned a while
        assert holder(kube) == "replica-a"
        assert campaign_a.leading
        assert not campaign_b.leading
        assert metrics_a.leader
        assert not metrics_b.leader
        assert sum(metrics_a.judged.values()) >= 7
        assert sum(metrics_b.judged.values()) == 0

        # fixed: the privileged pod drops `privileged`, its result turns to pass
        kube.put("pods", pod("root", "team-a"))
        fixed = copy.deepcopy(TEAM_A)
        fixed["results"][3] = result("Pod", "root", "team-a", "privilege", "pass")
        fixed["summary"] = {"pass": 3, "fail": 1, "warn": 0, "error": 0, "skip": 0}
        await eventually(lambda: stored(kube, "team-a") == fixed)

        # deleted: the orphan ConfigMap's result goes away
        kube.delete("configmaps", "team-a", "orphan")
        del fixed["results"][0]
        fixed["summary"] = {"pass": 3, "fail": 0, "warn": 0, "error": 0, "skip": 0}
        await eventually(lambda: stored(kube, "team-a") == fixed)
        validate(stored(kube, "team-a") or {})

        # everything of team-b deleted: its report is deleted too
        for resource, name in (("pods", "loose"), ("deployments.apps", "web"), ("deployments.apps", "api")):
            kube.delete(resource, "team-b", name)
        await eventually(lambda: stored(kube, "team-b") is None)
        assert sum(metrics_b.judged.values()) == 0

        # the leader shuts down and releases the lease: the other replica takes over at once
        await first.aclose()
        await eventually(lambda: holder(kube) == "replica-b" and sum(metrics_b.judged.values()) == 3)
        lease = kube.get("leases.coordination.k8s.io", "portcullis", "portcullis-scan")
        assert lease["spec"]["leaseTransitions"] == 1
        assert lease["spec"]["leaseDurationSeconds"] == 1
        await eventually(lambda: not metrics_b.queue)
        assert stored(kube, "team-a") == fixed  # same results: the new leader rewrote nothing
        assert dict(metrics_b.writes) == {}


async def test_a_namespace_label_change_judges_its_objects_again(kube: Any, scan_config: dict[str, Any]) -> None:
    seed(kube)
    cfg = config_mod.parse(scan_config)
    async with replica(cfg, "replica-a"):
        await eventually(lambda: stored(kube, "team-b") == TEAM_B)
        labels = {"pod-security.kubernetes.io/enforce": "restricted"}
        kube.put("namespaces", {"metadata": {"name": "team-b", "labels": labels}})
        stricter = copy.deepcopy(TEAM_B)
        host_network = HOST_NETWORK.replace("[baseline:latest]", "[restricted:latest]")  # found at the enforce level
        stricter["results"][1] = result("Deployment", "web", "team-b", "privilege", "warn", host_network)
        stricter["results"][2] = result("Pod", "loose", "team-b", "privilege", "fail", ESCALATION)
        stricter["summary"] = {"pass": 1, "fail": 1, "warn": 1, "error": 0, "skip": 0}
        await eventually(lambda: stored(kube, "team-b") == stricter)


async def test_a_conflicting_report_write_is_read_again_and_retried(kube: Any, scan_config: dict[str, Any]) -> None:
    seed(kube)
    cfg = config_mod.parse(scan_config)
    async with replica(cfg, "replica-a") as (metrics, _campaign):
        await eventually(lambda: stored(kube, "team-a") == TEAM_A)
        kube.fail_next["PUT policyreports"] = 2  # someone else writes in between, twice
        kube.put("pods", pod("root", "team-a"))
        await eventually(lambda: (stored(kube, "team-a") or {}).get("summary", {}).get("fail") == 1)
        assert metrics.conflicts == 2
        assert metrics.write_errors == 0


async def test_without_the_policyreport_crds_the_scan_says_what_to_install(
    kube: Any, scan_config: dict[str, Any]
) -> None:
    del kube.resources["policyreports.wgpolicyk8s.io"]
    seed(kube)
    with pytest.raises(errors.ApiServerError, match="PolicyReport CRDs are not installed"):
        await scan_commands.run(config_mod.parse(scan_config))


def test_metrics_render_progress_and_duration() -> None:
    metrics = ScanMetrics(passes=2, listed=10, done=7, last_pass_seconds=1.25, leader=True)
    metrics.judged["Pod"] = 7
    text = "\n".join(metrics.lines())
    assert 'portcullis_scan_objects_judged_total{kind="Pod"} 7' in text
    assert "portcullis_scan_pass_judged 7" in text
    assert "portcullis_scan_last_pass_duration_seconds 1.25" in text
    assert "# TYPE portcullis_scan_passes_total counter" in text


async def test_the_scan_command_prints_a_summary_and_exits_1_when_something_fails(
    kube: Any, scan_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(kube)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(scan_config))
    code = await asyncio.to_thread(cli.main, ["scan", "--config", str(path), "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["version"] == 1
    assert out["summary"] == {"pass": 3, "fail": 2, "warn": 2, "error": 0, "skip": 0}
    code = await asyncio.to_thread(cli.main, ["scan", "--config", str(path)])
    text = capsys.readouterr().out
    assert text.startswith("scanned 7 objects of 10 kinds: 3 pass, 2 fail, 2 warn, 0 error, 0 skip\n")
    assert "  team-a: 2 pass, 2 fail\n" in text


def test_the_scan_command_without_an_api_server_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("kubernetes: {mode: 'off'}\n")
    assert cli.main(["scan", "--config", str(path)]) == 2
    assert "scan needs a Kubernetes API server" in capsys.readouterr().err


NAMESPACES_NEED_OWNER = """
apiVersion: constraints.gatekeeper.sh/v1beta1
kind: K8sRequiredLabels
metadata:
  name: namespaces-need-owner
spec:
  match:
    kinds:
      - apiGroups: [""]
        kinds: ["Namespace"]
  parameters:
    labels:
      - key: owner
"""


async def test_cluster_scoped_objects_go_to_the_cluster_policy_report(kube: Any, scan_config: dict[str, Any]) -> None:
    (Path(scan_config["policy"]["gatekeeper"][0]) / "namespaces.yaml").write_text(NAMESPACES_NEED_OWNER)
    kube.put("namespaces", {"metadata": {"name": "team-a", "labels": {"owner": "alice"}}})
    kube.put("namespaces", {"metadata": {"name": "team-b"}})
    summary = await scan_commands.run(config_mod.parse(scan_config))
    assert summary["kinds"][-1] == "Namespace"
    got = kube.get("clusterpolicyreports.wgpolicyk8s.io", "", "portcullis-cluster")
    assert got is not None
    validate(got)
    refs = [(r["resources"][0], r["result"]) for r in got["results"]]
    assert refs == [
        ({"apiVersion": "v1", "kind": "Namespace", "name": "team-a", "uid": "uid-namespaces--team-a"}, "pass"),
        ({"apiVersion": "v1", "kind": "Namespace", "name": "team-b", "uid": "uid-namespaces--team-b"}, "fail"),
    ]
    assert got["summary"] == {"pass": 1, "fail": 1, "warn": 0, "error": 0, "skip": 0}
    assert got["metadata"]["labels"] == MANAGED
    assert "namespace" not in got["metadata"]
