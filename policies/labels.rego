# METADATA
# title: Required labels
# description: Workloads carry team and cost-center labels so GPU spend can be charged back.
# custom:
#   id: required-labels
#   mode: warn
package portcullis.labels

import data.portcullis.lib
import data.portcullis.settings
import rego.v1

deny contains {"msg": msg, "path": "metadata.labels"} if {
	some label in settings.required_labels
	not lib.labels[label]
	# concat, not sprintf("%s"): rego-cpp 1.x quotes a computed string inside sprintf
	msg := concat("", ["label '", label, "' is missing (required: ", concat(", ", settings.required_labels), ")"])
}

deny contains {"msg": msg, "path": sprintf("metadata.labels.%s", [label])} if {
	some label in settings.required_labels
	value := lib.labels[label]
	trim_space(value) == ""
	msg := sprintf("label '%s' is empty", [label])
}
