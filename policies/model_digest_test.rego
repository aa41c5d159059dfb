package portcullis.model_digest_test

import data.portcullis.model_digest
import rego.v1

digest := "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

pods(image) := [{"path": "spec.template.spec", "metadata": {}, "spec": {"containers": [{"name": "s", "image": image}]}}]

test_tagged_serving_image_is_denied if {
	count(model_digest.deny) == 1 with input.request as {"object": {"metadata": {"labels": {"app.kubernetes.io/component": "inference"}}}}
		with input.pods as pods("registry.example.com/llm:v1")
}

test_digest_pinned_image_passes if {
	count(model_digest.deny) == 0 with input.request as {"object": {"metadata": {"labels": {"app.kubernetes.io/component": "inference"}}}}
		with input.pods as pods(sprintf("registry.example.com/llm@%s", [digest]))
}

test_other_workloads_may_use_tags if {
	count(model_digest.deny) == 0 with input.request as {"object": {"metadata": {"labels": {"app.kubernetes.io/component": "batch"}}}}
		with input.pods as pods("x:latest")
}

test_pod_template_label_also_marks_serving if {
	count(model_digest.deny) == 1 with input.request as {"object": {"metadata": {}}}
		with input.pods as [{"path": "spec", "metadata": {"labels": {"app.kubernetes.io/component": "predictor"}}, "spec": {"containers": [{"name": "p", "image": "m:1"}]}}]
}
