package portcullis.host_ipc_test

import data.portcullis.host_ipc
import rego.v1

pods(gpus, host_ipc, annotations) := [{
	"path": "spec.template.spec",
	"metadata": {"annotations": annotations},
	"spec": {"hostIPC": host_ipc, "containers": [{"name": "t", "image": "x", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]},
}]

test_multi_gpu_host_ipc_is_denied if {
	paths := {d.path | some d in host_ipc.deny} with input.pods as pods("8", true, {})
	paths == {"spec.template.spec.hostIPC"}
}

test_single_gpu_may_use_host_ipc if {
	count(host_ipc.deny) == 0 with input.pods as pods("1", true, {})
}

test_exempted_pod_passes if {
	count(host_ipc.deny) == 0 with input.pods as pods("4", true, {"portcullis.dev/allow-host-ipc": "true"})
}

test_exemption_must_say_true if {
	count(host_ipc.deny) == 1 with input.pods as pods("4", true, {"portcullis.dev/allow-host-ipc": "yes"})
}

test_no_host_ipc_passes if {
	count(host_ipc.deny) == 0 with input.pods as pods("8", false, {})
}
