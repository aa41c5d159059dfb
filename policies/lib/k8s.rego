# Helpers shared by the policy library: containers with their field paths, GPU counts.
package portcullis.lib

import rego.v1

gpu_resource := "nvidia.com/gpu"

# Every container of every pod spec of the workload, keyed by its field path.
# (An object, not a set of {path, container}: rego-cpp hashes set members, objects it does not.)
containers[path] := c if {
	some pod in input.pods
	some field in ["initContainers", "containers"]
	some i, c in pod.spec[field]
	path := sprintf("%s.%s[%d]", [pod.path, field, i])
}

# GPUs a container asks for (limits win; a request alone still counts).
gpus(c) := to_number(c.resources.limits[gpu_resource]) if c.resources.limits[gpu_resource]

else := to_number(c.resources.requests[gpu_resource]) if c.resources.requests[gpu_resource]

else := 0

# GPUs one pod of the workload holds: the regular containers run together.
pod_gpus(pod) := sum([gpus(c) | some c in object.get(pod.spec, "containers", [])])

# Pods the workload runs at once: replicas or Job parallelism, else 1.
replicas := n if {
	n := input.request.object.spec.parallelism
} else := n if {
	n := input.request.object.spec.replicas
} else := 1

labels := object.get(input.request.object.metadata, "labels", {})

annotations(pod) := object.get(pod.metadata, "annotations", {})
