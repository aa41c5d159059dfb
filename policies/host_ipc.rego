# METADATA
# title: No hostIPC for multi-GPU training pods
# description: >-
#   NCCL works without the host IPC namespace when /dev/shm is sized; sharing it exposes
#   every process on the node. Exempt a pod with the portcullis.dev/allow-host-ipc annotation.
# custom:
#   id: no-host-ipc-multi-gpu
#   mode: enforce
package portcullis.host_ipc

import data.portcullis.lib
import data.portcullis.settings
import rego.v1

deny contains {"msg": msg, "path": sprintf("%s.hostIPC", [pod.path])} if {
	some pod in input.pods
	pod.spec.hostIPC == true
	n := lib.pod_gpus(pod)
	n > 1
	not exempt(pod)
	msg := sprintf("pod uses %d GPUs and hostIPC; mount an emptyDir (medium: Memory) at /dev/shm instead, or annotate %s=true", [n, settings.host_ipc_exemption])
}

exempt(pod) if lib.annotations(pod)[settings.host_ipc_exemption] == "true"
