# METADATA
# title: Model-serving images pinned by digest
# description: >-
#   Inference servers run exactly the image that was reviewed: the reference carries
#   @sha256:<64 hex>. Tags move; digests do not.
# custom:
#   id: model-serving-digest
#   mode: enforce
package portcullis.model_digest

import data.portcullis.lib
import data.portcullis.settings
import rego.v1

model_serving if {
	lib.labels["app.kubernetes.io/component"] in settings.model_serving_components
}

model_serving if {
	some pod in input.pods
	pod.metadata.labels["app.kubernetes.io/component"] in settings.model_serving_components
}

deny contains {"msg": msg, "path": sprintf("%s.image", [path])} if {
	model_serving
	some path, container in lib.containers
	not regex.match(`@sha256:[a-f0-9]{64}$`, container.image)
	msg := sprintf("model-serving image '%s' must be pinned by digest (image@sha256:...)", [container.image])
}
