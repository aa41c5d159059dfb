package portcullis.labels_test

import data.portcullis.labels
import rego.v1

request(l) := {"object": {"metadata": {"labels": l}}}

test_both_labels_pass if {
	count(labels.deny) == 0 with input.request as request({"team": "vision", "cost-center": "cc-42"})
}

test_missing_cost_center_is_reported if {
	count(labels.deny) == 1 with input.request as request({"team": "vision"})
}

test_no_labels_reports_both if {
	count(labels.deny) == 2 with input.request as {"object": {"metadata": {}}}
}

test_empty_label_is_reported if {
	paths := {d.path | some d in labels.deny} with input.request as request({"team": " ", "cost-center": "cc"})
	paths == {"metadata.labels.team"}
}
