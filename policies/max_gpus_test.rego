package portcullis.max_gpus_test

import data.portcullis.max_gpus
import rego.v1

request(parallelism) := {"object": {"kind": "Job", "metadata": {}, "spec": {"parallelism": parallelism}}}

pods(gpus) := [{"path": "spec.template.spec", "metadata": {}, "spec": {"containers": [{"name": "w", "image": "x", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}]

test_within_default_limit if {
	count(max_gpus.deny) == 0 with input.request as request(2) with input.pods as pods("8")
		with input.namespace as {"name": "ml", "labels": {}}
}

test_above_default_limit_is_denied if {
	count(max_gpus.deny) == 1 with input.request as request(4) with input.pods as pods("8")
		with input.namespace as {"name": "ml", "labels": {}}
}

test_namespace_label_lowers_limit if {
	count(max_gpus.deny) == 1 with input.request as request(2) with input.pods as pods("2")
		with input.namespace as {"name": "ml", "labels": {"portcullis.dev/max-gpus": "2"}}
}

test_namespace_label_raises_limit if {
	count(max_gpus.deny) == 0 with input.request as request(8) with input.pods as pods("8")
		with input.namespace as {"name": "ml", "labels": {"portcullis.dev/max-gpus": "64"}}
}
