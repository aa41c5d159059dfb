# Site settings of the policy library: edit these values, not the policies.
package portcullis.settings

import rego.v1

allowed_registries := [
	"registry.example.com/",
	"nvcr.io/nvidia/",
	"ghcr.io/example-org/",
]

required_labels := ["team", "cost-center"]

# Workloads labelled with one of these component values serve models.
model_serving_components := {"model-serving", "inference", "predictor"}

default_max_gpus_per_job := 16

# Namespace label that raises or lowers the limit for one namespace.
max_gpus_label := "portcullis.dev/max-gpus"

host_ipc_exemption := "portcullis.dev/allow-host-ipc"
