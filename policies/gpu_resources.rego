# METADATA
# title: GPU limits and tolerations
# description: >-
#   A container that asks for GPUs sets nvidia.com/gpu in limits, and its pod tolerates the
#   nvidia.com/gpu taint so it lands on (and only on) GPU nodes by intent.
# custom:
#   id: gpu-resources
#   mode: enforce
package portcullis.gpu_resources

import data.portcullis.lib
import rego.v1

deny contains {"msg": msg, "path": sprintf("%s.resources.limits", [path])} if {
	some path, container in lib.containers
	container.resources.requests[lib.gpu_resource]
	not container.resources.limits[lib.gpu_resource]
	msg := sprintf("container '%s' requests %s but sets no limit for it", [container.name, lib.gpu_resource])
}

deny contains {"msg": msg, "path": sprintf("%s.tolerations", [pod.path])} if {
	some pod in input.pods
	lib.pod_gpus(pod) > 0
	not tolerates_gpu(pod)
	msg := sprintf("pod uses GPUs but does not tolerate the %s taint", [lib.gpu_resource])
}

tolerates_gpu(pod) if {
	some t in pod.spec.tolerations
	t.key == lib.gpu_resource
}

tolerates_gpu(pod) if {
	some t in pod.spec.tolerations
	t.operator == "Exists"
	not t.key
}
