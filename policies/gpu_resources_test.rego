package portcullis.gpu_resources_test

import data.portcullis.gpu_resources
import rego.v1

pods(resources, tolerations) := [{
	"path": "spec",
	"metadata": {},
	"spec": {"containers": [{"name": "train", "image": "x", "resources": resources}], "tolerations": tolerations},
}]

toleration := [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

test_limit_and_toleration_pass if {
	count(gpu_resources.deny) == 0 with input.pods as pods({"limits": {"nvidia.com/gpu": "2"}}, toleration)
}

test_request_without_limit_is_denied if {
	paths := {d.path | some d in gpu_resources.deny} with input.pods as pods({"requests": {"nvidia.com/gpu": 1}}, toleration)
	paths == {"spec.containers[0].resources.limits"}
}

test_missing_toleration_is_denied if {
	paths := {d.path | some d in gpu_resources.deny} with input.pods as pods({"limits": {"nvidia.com/gpu": "1"}}, [])
	paths == {"spec.tolerations"}
}

test_wildcard_toleration_counts if {
	count(gpu_resources.deny) == 0 with input.pods as pods({"limits": {"nvidia.com/gpu": "1"}}, [{"operator": "Exists"}])
}

test_cpu_pod_needs_nothing if {
	count(gpu_resources.deny) == 0 with input.pods as pods({"limits": {"cpu": "1"}}, [])
}
