"""Hypothesis strategies for fuzzing: JSON values, and Kubernetes objects whose every field may
hold the wrong JSON type (the shape an attacker, or a buggy client, can send the webhook).

Shared by the hypothesis tests (``from .strategies import ...``) and the atheris harnesses.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# PORTCULLIS_FUZZ=deep: fresh randomness and 25x the examples; CI stays derandomized and modest.
_DEEP = os.environ.get("PORTCULLIS_FUZZ") == "deep"
_FACTOR = 25 if _DEEP else 1
# The fuzz tests' settings, applied per test (``@settings(S.FUZZ, max_examples=...)``), not as a
# global profile, so the other suites' hypothesis tests keep their own defaults.
FUZZ = settings(
    derandomize=not _DEEP,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def examples(n: int) -> int:
    """A test's ``max_examples``: ``n`` in CI, many more in deep mode."""
    return n * _FACTOR


# Scalars a JSON decoder can produce (orjson refuses NaN and infinities).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what orjson encodes
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)

json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)

# Values that tend to trip type confusion: unhashable where a name is expected, containers
# where a string is expected, numbers where a mapping is expected.
awkward = st.one_of(
    st.sampled_from(
        [None, True, False, 0, 1, -1, 1.5, "", "x", [], {}, [[]], [{}], {"": {}}, [None], ["ALL"], 2**64 - 1]
    ),
    json_values,
)


def maybe(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The right type most of the time (4 in 5), any JSON value otherwise: deep fields are then
    reached with right-typed parents often enough, and every level still sees wrong types."""
    return st.integers(0, 4).flatmap(lambda n: right if n else awkward)


def obj(required: dict[str, st.SearchStrategy[Any]] | None = None, **optional: st.SearchStrategy[Any]) -> Any:
    """A JSON object with some of ``optional`` keys (each possibly ill-typed), or any JSON value."""
    return maybe(st.fixed_dictionaries(required or {}, optional=optional))


def lst(item: st.SearchStrategy[Any], max_size: int = 3) -> st.SearchStrategy[Any]:
    return maybe(st.lists(item, max_size=max_size))


names = st.sampled_from(["app", "sidecar", "init", "", "a" * 70])
resource_names = st.sampled_from(
    ["cpu", "memory", "nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/mig-7g.80gb", "amd.com/gpu", ""]
)
# Quantities, legal and not; exponents stay small: a huge one is a known hang, tested on its own.
quantities = maybe(
    st.one_of(
        st.sampled_from(
            ["1", "0", "500m", "2Ki", "1e3", "1E-2", "-1", "+1", ".5", "1.", "abc", " 1", "1Qi", "1e", "0.1n"]
        ),
        st.integers(-10, 10),
        st.floats(-1e6, 1e6, allow_nan=False),
        st.from_regex(r"\A[+-]?[0-9]{0,4}(\.[0-9]{0,3})?([KMGTPE]i?|[numk]|[eE][+-]?[0-9]{1,2})?\Z"),
    )
)
amounts = maybe(st.dictionaries(resource_names, quantities, max_size=3))
resources = obj(limits=amounts, requests=amounts, claims=awkward)
profile_types = maybe(st.sampled_from(["RuntimeDefault", "Localhost", "Unconfined", "", "unconfined"]))
capabilities = obj(
    add=lst(maybe(st.sampled_from(["NET_BIND_SERVICE", "SYS_ADMIN", "CHOWN", "ALL"]))),
    drop=lst(maybe(st.sampled_from(["ALL", "NET_RAW"]))),
)
security_context = obj(
    privileged=awkward,
    allowPrivilegeEscalation=awkward,
    capabilities=capabilities,
    seccompProfile=obj(type=profile_types, localhostProfile=awkward),
    appArmorProfile=obj(type=profile_types, localhostProfile=awkward),
    seLinuxOptions=obj(
        type=maybe(st.sampled_from(["container_t", "spc_t", "", "container_init_t"])), user=awkward, role=awkward
    ),
    procMount=maybe(st.sampled_from(["Default", "Unmasked"])),
    runAsNonRoot=awkward,
    runAsUser=maybe(st.integers(-1, 2)),
    readOnlyRootFilesystem=awkward,
    windowsOptions=obj(hostProcess=awkward),
    sysctls=lst(obj(name=maybe(st.sampled_from(["kernel.shm_rmid_forced", "net.core.somaxconn", "x"])), value=awkward)),
)
handler = obj(httpGet=obj(host=awkward, port=awkward), tcpSocket=obj(host=awkward), exec=awkward)
container = obj(
    name=maybe(names),
    image=maybe(st.sampled_from(["nginx", "nginx:latest", "nginx:1.27", "r.io/a/b@sha256:" + "0" * 64, "", "a:b:c"])),
    securityContext=security_context,
    ports=lst(obj(hostPort=maybe(st.integers(0, 65535)), containerPort=awkward)),
    resources=resources,
    restartPolicy=maybe(st.just("Always")),
    livenessProbe=handler,
    readinessProbe=handler,
    startupProbe=handler,
    lifecycle=obj(postStart=handler, preStop=handler),
)
gpu_label = "nvidia.com/gpu.product"
match_expression = obj(
    key=maybe(st.just(gpu_label)),
    operator=maybe(st.sampled_from(["In", "NotIn"])),
    values=lst(maybe(st.text(max_size=4))),
)
affinity = obj(
    nodeAffinity=obj(
        requiredDuringSchedulingIgnoredDuringExecution=obj(
            nodeSelectorTerms=lst(obj(matchExpressions=lst(match_expression)))
        )
    )
)
volume = obj(
    name=maybe(names),
    hostPath=awkward,
    emptyDir=awkward,
    configMap=awkward,
    nfs=awkward,
)
pod_spec = obj(
    containers=lst(container),
    initContainers=lst(container),
    ephemeralContainers=lst(container),
    securityContext=security_context,
    volumes=lst(volume),
    hostNetwork=awkward,
    hostPID=awkward,
    hostIPC=awkward,
    hostUsers=awkward,
    runtimeClassName=maybe(st.sampled_from(["nvidia", "gvisor", "runc", "", "kata"])),
    os=obj(name=maybe(st.sampled_from(["linux", "windows"]))),
    serviceAccountName=maybe(st.sampled_from(["default", "app"])),
    serviceAccount=awkward,
    automountServiceAccountToken=awkward,
    nodeSelector=maybe(st.dictionaries(st.sampled_from([gpu_label, "zone"]), maybe(st.text(max_size=4)), max_size=2)),
    affinity=affinity,
    overhead=amounts,
    resources=resources,
)
metadata = obj(
    name=maybe(names),
    namespace=maybe(st.just("default")),
    uid=awkward,
    labels=maybe(st.dictionaries(st.text(max_size=8), maybe(st.text(max_size=8)), max_size=3)),
    annotations=maybe(
        st.dictionaries(
            st.sampled_from(
                [
                    "container.apparmor.security.beta.kubernetes.io/app",
                    "seccomp.security.alpha.kubernetes.io/pod",
                    "container.seccomp.security.alpha.kubernetes.io/app",
                    "x",
                ]
            ),
            awkward,
            max_size=3,
        )
    ),
)
template = obj(metadata=metadata, spec=pod_spec)

KINDS = ["Pod", "Deployment", "CronJob", "PodTemplate", "Job", "DaemonSet"]


@st.composite
def workloads(draw: st.DrawFn) -> tuple[str, Any]:
    """(kind, object): a workload of ``kind`` whose fields are sometimes of the wrong type."""
    kind = draw(st.sampled_from(KINDS))
    if kind == "Pod":
        body = draw(st.fixed_dictionaries({}, optional={"metadata": metadata, "spec": pod_spec}))
    elif kind == "PodTemplate":
        body = draw(st.fixed_dictionaries({}, optional={"metadata": metadata, "template": template}))
    elif kind == "CronJob":
        job = obj(spec=obj(template=template))
        body = draw(st.fixed_dictionaries({}, optional={"metadata": metadata, "spec": obj(jobTemplate=job)}))
    else:
        body = draw(st.fixed_dictionaries({}, optional={"metadata": metadata, "spec": obj(template=template)}))
    return kind, {"apiVersion": "v1", "kind": kind, **body}


def review_of(kind: str, obj_: Any, *, operation: str = "CREATE", old: Any = None) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0f0e0d0c-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
            "operation": operation,
            "namespace": "default",
            "name": "fuzz",
            "userInfo": {"username": "fuzzer", "groups": ["system:authenticated"]},
            "object": obj_,
            "oldObject": old,
            "dryRun": False,
        },
    }


# A config that turns every pure check on at its strictest, so the fuzzer reaches every branch.
STRICT_CONFIG: dict[str, Any] = {
    "privilege": {
        "level": "hardened",
        "warn_level": "restricted",
        "audit_level": "baseline",
        "always_checks": ["imageTag"],
    },
    "runtimeclass": {
        "gpu_runtime_classes": ["nvidia"],
        "denied_runtime_classes": ["runc"],
    },
    "quota": {
        "per_pod": {"max_gpus": 4, "requests_equal_limits": True, "require_gpu_model": True},
        "quotas": [
            {"name": "a100", "limit": 8, "gpu_model": "A100"},
            {"name": "team", "limit": "1/2", "per": "namespace"},
        ],
    },
}
UNTRUSTED_LABELS = {"portcullis.dev/untrusted": "true", "pod-security.kubernetes.io/enforce": "restricted"}
