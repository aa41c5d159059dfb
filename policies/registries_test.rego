package portcullis.registries_test

import data.portcullis.registries
import rego.v1

# Tests replace input per key (`with input.pods as`): the embedded engine (rego-cpp 1.x)
# crashes on `with input as <whole document>` when the rule under test calls a built-in.
pods(image) := [{"path": "spec", "metadata": {}, "spec": {"containers": [{"name": "c", "image": image}]}}]

test_allowed_registry_passes if {
	count(registries.deny) == 0 with input.pods as pods("registry.example.com/team/app:1.0")
}

test_docker_hub_is_denied if {
	paths := {d.path | some d in registries.deny} with input.pods as pods("docker.io/library/nginx")
	paths == {"spec.containers[0].image"}
}

test_prefix_must_match_whole_registry if {
	count(registries.deny) == 1 with input.pods as pods("registry.example.com.evil.io/x")
}
