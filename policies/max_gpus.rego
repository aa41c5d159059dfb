# METADATA
# title: Maximum GPUs per job
# description: >-
#   One workload holds at most N GPUs at once (GPUs per pod x replicas or parallelism).
#   The namespace label portcullis.dev/max-gpus sets N for a namespace.
# custom:
#   id: max-gpus-per-job
#   mode: enforce
package portcullis.max_gpus

import data.portcullis.lib
import data.portcullis.settings
import rego.v1

limit := to_number(input.namespace.labels[settings.max_gpus_label]) if {
	input.namespace.labels[settings.max_gpus_label]
} else := settings.default_max_gpus_per_job

total := sum([lib.pod_gpus(pod) | some pod in input.pods]) * lib.replicas

deny contains {"msg": msg, "path": "spec"} if {
	total > limit
	msg := sprintf("workload holds %d GPUs at once (%d replicas), above the limit of %d for namespace '%s'", [total, lib.replicas, limit, input.namespace.name])
}
