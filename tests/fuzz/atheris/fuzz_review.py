"""atheris: AdmissionReview bytes → ``review.decode`` → the pipeline with the real checks.

A custom mutator keeps inputs JSON and swaps values for ones of other types, so most runs reach
the checks; plain byte mutations still hit the decoder.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys

import atheris
import harness
import orjson

with atheris.instrument_imports(include=["webhook"]):
    from webhook import config as config_mod
    from webhook import errors
    from webhook.admission import review, server
    from webhook.checks.pipeline import Pipeline
    from webhook.checks.registry import build_checks
    from webhook.checks.services import Services
    from webhook.core.deadline import Deadline

import strategies as S  # tests/fuzz is on sys.path (harness)

CONFIG = config_mod.parse(S.STRICT_CONFIG)
PIPELINE = Pipeline(CONFIG, build_checks(CONFIG, Services(ci=True)))
_container = {
    "name": "app",
    "image": "nginx:1.27",
    "ports": [{"hostPort": 80}],
    "resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "1"}, "requests": {"nvidia.com/gpu": "1"}},
    "securityContext": {
        "privileged": True,
        "capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "appArmorProfile": {"type": "Localhost"},
        "seLinuxOptions": {"type": "container_t", "user": "u"},
    },
    "livenessProbe": {"httpGet": {"host": "h", "port": 1}},
}
_spec = {
    "containers": [_container],
    "initContainers": [_container],
    "securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}], "runAsNonRoot": True},
    "volumes": [{"name": "v", "hostPath": {"path": "/"}}],
    "nodeSelector": {"nvidia.com/gpu.product": "A100"},
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A100"]}]}]}}},
    "overhead": {"nvidia.com/gpu": "1"},
    "runtimeClassName": "runc",
}  # fmt: skip
SEEDS = [
    orjson.dumps(S.review_of("Pod", {"kind": "Pod", "metadata": {"name": "p", "annotations": {}}, "spec": _spec})),
    orjson.dumps(S.review_of("Deployment", {"kind": "Deployment", "spec": {"template": {"spec": _spec}}})),
]


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    if rnd.random() < 0.2:
        return atheris.Mutate(data, max_size)
    return harness.mutate_json(data, SEEDS, max_size, rnd)


class _Crashes(logging.Handler):
    """The exceptions the pipeline logs (and turns into a failure mode) when a check crashes."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.excs: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.excs.append(record.exc_info[1])


CRASHES = _Crashes()
_log = logging.getLogger("portcullis.admission")
_log.addHandler(CRASHES)
_log.propagate = False


def test_one_input(data: bytes) -> None:
    try:
        decoded = review.decode(data)
    except errors.ReviewError:
        return
    CRASHES.excs.clear()
    try:
        asyncio.run(PIPELINE.evaluate(server._subject(decoded), Deadline.after(30)))
    except Exception as exc:
        harness.tolerate(exc, errors.ReviewError)
    for exc in CRASHES.excs:
        harness.tolerate(exc)


def main() -> None:
    atheris.Setup(harness.argv(), test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.exit(main())
