"""Copying only what policies can read (real rego-cpp plans): the binary plan reader, the
conservative analysis, and evaluations that match the whole-input ones exactly."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest

from webhook.policy import gatekeeper, modules, native, plan, probe, reads, rego

ROOT = Path(__file__).resolve().parents[2]


def paths_of(source: str) -> list[str] | None:
    compiled = rego.compile_modules([modules.parse("p.rego", "package p\nimport rego.v1\n" + source)])
    return compiled.input_reads.paths() if compiled.input_reads is not None else None


def test_library_reads_pods_labels_and_replicas_but_not_the_template_copy() -> None:
    compiled = rego.load_directory([ROOT / "policies"])
    assert compiled.input_reads is not None
    assert compiled.input_reads.paths() == [
        "namespace.labels.*",
        "namespace.name.*",
        "pods.*",
        "request.object.metadata.*",
        "request.object.spec.parallelism.*",
        "request.object.spec.replicas.*",
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('deny contains "x" if input.a.b', ["a.b.*"]),
        ('deny contains "x" if not input.a.b.c', ["a.b.c.*"]),
        ('deny contains "x" if { some v in input.list; v == 1 }', ["list.*"]),
        ('deny contains "x" if input.a[input.k] == 1', ["a.*", "k.*"]),
        ('deny contains "x" if object.get(input.meta, "labels", {}).team == "a"', ["meta.*"]),
        (
            'deny contains "x" if { m := input.request.object; m.metadata.name == "n" }',
            ["request.object.metadata.name.*"],
        ),
        ('deny contains "x" if f(input.obj)\nf(o) if { o.a; input.z }', ["obj.*", "z.*"]),
        ('deny contains "x" if count(input.request) > 1', ["request.*"]),
        ('deny contains "x" if { x := input; x.a }', ["a.*"]),
    ],
)
def test_analysis_keeps_every_path_a_policy_can_reach(source: str, expected: list[str]) -> None:
    assert paths_of(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        'deny contains "x" if count(input) > 1',
        'deny contains "x" if { walk(input, [p, v]); v == 1 }',
        'deny contains "x" if json.marshal(input) == "{}"',
        'deny contains "x" if { some k, _ in input; k == "a" }',
        'deny contains "x" if g with input.a as 1\ng if input.a == 1',
    ],
)
def test_a_use_of_the_whole_input_disables_pruning(source: str) -> None:
    assert paths_of(source) is None


def documents() -> list[dict[str, Any]]:
    """Reviews across the library's branches (GPUs, hostIPC, labels, digests, replicas)."""
    out: list[dict[str, Any]] = []
    for sample in probe.SAMPLES:
        base = probe.sample_document(sample)
        out.append(base)
        bare = copy.deepcopy(base)
        bare["request"]["object"]["metadata"]["labels"] = {"team": " "}
        bare["namespace"]["labels"] = {"portcullis.dev/max-gpus": "1"}
        out.append(bare)
        job = copy.deepcopy(base)
        job["request"]["object"]["spec"]["parallelism"] = 8
        job["request"]["oldObject"] = copy.deepcopy(job["request"]["object"])
        job["context"] = {"images": {"verified": True}}
        out.append(job)
    return out


def test_pruned_evaluation_matches_the_whole_input_on_the_library() -> None:
    mods = [modules.read(p) for p in modules.discover([ROOT / "policies"], tests=False)]
    pruned = rego.compile_modules(mods)
    whole = rego.compile_modules(mods, prune_input=False)
    assert whole.input_reads is None
    findings = 0
    for document in documents():
        expected = whole.evaluate(document)
        assert pruned.evaluate(document) == expected
        findings += sum(len(r.deny) for r in expected)
    assert findings > 10  # the documents exercise deny branches, not just empty answers


def test_pruned_gatekeeper_evaluation_matches_the_whole_input() -> None:
    templates = gatekeeper.load([ROOT / "policies" / "gatekeeper"])
    for template in templates.templates.values():
        assert template.compiled.input_reads is not None
    for document in documents():
        review = document["request"]
        namespace = {"metadata": {"name": review.get("namespace") or "default", "labels": {}}}
        results = templates.evaluate(review, namespace)
        for constraint in templates.matching(review, namespace):
            template = templates.templates[constraint.kind]
            whole = native.interpreter()
            whole_input = {"review": review, "parameters": constraint.parameters}
            if template.referential:
                whole_input[gatekeeper.INVENTORY_INPUT] = {}
            native.set_input(whole, whole_input)
            value = native.query(whole, template.compiled.bundle, template.entrypoint) or []
            mine = next(r for r in results if r.policy.id == constraint.id)
            assert sorted(i.msg for i in mine.deny) == sorted(v["msg"] for v in value)


def test_unreadable_fields_no_longer_reach_the_engine() -> None:
    compiled = rego.load_directory([ROOT / "policies"])
    document = probe.sample_document(probe.SAMPLES[0])
    document["request"]["oldObject"] = {"metadata": {"annotations": {"note": "\udcff"}}}
    assert all(r.error is None for r in compiled.evaluate(document))


def test_unreadable_plan_falls_back_to_the_whole_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "bundle_bytes", lambda bundle: b"REGOBUND\x01\x01 truncated")
    compiled = rego.load_directory([ROOT / "policies"])
    assert compiled.input_reads is None
    assert all(r.error is None for r in compiled.evaluate(probe.sample_document(probe.SAMPLES[0])))


def test_plan_reader_rejects_what_it_does_not_understand() -> None:
    compiled = rego.load_directory([ROOT / "policies"])
    data = native.bundle_bytes(compiled.bundle)
    assert data is not None
    assert len(plan.read(data).bodies) > len(compiled.policies)
    for bad in (b"junk", data[:200], data[:8] + b"\x02" + data[9:]):
        with pytest.raises(plan.PlanFormatError):
            plan.read(bad)


def test_compiling_writes_nothing_beside_the_modules(tmp_path: Path) -> None:
    source = tmp_path / "a.rego"
    source.write_text('package a\nimport rego.v1\ndeny contains "x" if input.a\n')
    before = source.stat().st_mtime_ns
    compiled = rego.compile_modules([modules.read(source, str(source))])
    assert compiled.input_reads is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.rego"]
    assert source.stat().st_mtime_ns == before


def test_prune_keeps_shared_values_and_drops_the_rest() -> None:
    compiled = rego.compile_modules(
        [modules.parse("p.rego", 'package p\nimport rego.v1\ndeny contains "x" if input.a.b == input.c[0]\n')]
    )
    assert isinstance(compiled.input_reads, reads.InputReads)
    shared = {"deep": [1]}
    document = {"a": {"b": shared, "other": 1}, "c": [shared], "d": "dropped"}
    pruned = compiled.input_reads.prune(document)
    assert pruned == {"a": {"b": shared}, "c": [shared]}
    assert pruned["a"]["b"] is shared


def test_keys_the_engine_would_match_by_their_quoted_form_are_kept() -> None:
    source = "package p\nimport rego.v1\ndeny contains v if v := input.a\n"
    pruned = rego.compile_modules([modules.parse("p.rego", source)])
    whole = rego.compile_modules([modules.parse("p.rego", source)], prune_input=False)
    document = {'"a"': "quoted", "b": 1}
    assert pruned.evaluate(document) == whole.evaluate(document)


def test_bundle_that_reads_no_input_gets_an_empty_one() -> None:
    compiled = rego.compile_modules([modules.parse("t.rego", "package t\nimport rego.v1\ndeny := set()\n")])
    assert compiled.input_reads is not None
    assert compiled.input_reads.paths() == []
    assert compiled.input_reads.prune({"a": 1}) == {}


def random_document(rng: random.Random) -> dict[str, Any]:
    """A review with random choices on every field the library looks at (and some it does not)."""

    def container(i: int) -> dict[str, Any]:
        gpus = rng.choice([None, "1", "2", "8", 4])
        resources: dict[str, Any] = {}
        if gpus is not None:
            resources[rng.choice(["limits", "requests"])] = {"nvidia.com/gpu": gpus}
        image = rng.choice(["registry.example.com/a:1", "docker.io/x:latest", "nvcr.io/nvidia/y@sha256:" + "a" * 64])
        return {"name": f"c{i}", "image": image, "resources": resources}

    labels = {k: rng.choice(["v", " ", "inference"]) for k in rng.sample(["team", "cost-center", "app"], 2)}
    annotations = rng.choice([{}, {"portcullis.dev/allow-host-ipc": rng.choice(["true", "no"])}])
    spec: dict[str, Any] = {
        "containers": [container(i) for i in range(rng.randint(1, 3))],
        "hostIPC": rng.choice([True, False]),
    }
    if rng.random() < 0.5:
        spec["initContainers"] = [container(9)]
    if rng.random() < 0.6:
        spec["tolerations"] = [rng.choice([{"operator": "Exists"}, {"key": "nvidia.com/gpu", "operator": "Exists"}])]
    meta = {"labels": labels | {"app.kubernetes.io/component": rng.choice(["inference", "batch"])}}
    template = {"metadata": meta | {"annotations": annotations}, "spec": spec}
    workload = {"replicas": rng.randint(0, 4), "template": template}
    if rng.random() < 0.3:
        workload["parallelism"] = rng.randint(1, 5)
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w", "labels": labels}, "spec": workload}
    review = probe.sample_review(obj) | {"oldObject": rng.choice([None, copy.deepcopy(obj)])}
    ns_labels = rng.choice([{}, {"portcullis.dev/max-gpus": str(rng.randint(1, 32))}])
    return {
        "apiVersion": "portcullis.dev/v1",
        "request": review,
        "pods": [{"path": "spec.template.spec", "metadata": template["metadata"], "spec": spec}],
        "namespace": {"name": "ns", "labels": ns_labels},
        "context": {"images": {"verified": rng.choice([True, False])}},
    }


def test_pruned_evaluation_matches_on_random_reviews() -> None:
    mods = [modules.read(p) for p in modules.discover([ROOT / "policies"], tests=False)]
    pruned = rego.compile_modules(mods)
    whole = rego.compile_modules(mods, prune_input=False)
    rng = random.Random(20261126)
    for _ in range(60):
        document = random_document(rng)
        assert pruned.evaluate(document) == whole.evaluate(document), document
