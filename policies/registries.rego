# METADATA
# title: Allowed registries
# description: Every container image comes from a registry the organisation trusts.
# custom:
#   id: allowed-registries
#   mode: enforce
package portcullis.registries

import data.portcullis.lib
import data.portcullis.settings
import rego.v1

deny contains {"msg": msg, "path": sprintf("%s.image", [path])} if {
	some path, container in lib.containers
	image := container.image
	not allowed(image)
	# concat, not sprintf("%s"): rego-cpp 1.x quotes a computed string inside sprintf
	registries := concat(", ", settings.allowed_registries)
	msg := concat("", ["image '", image, "' is not from an allowed registry (", registries, ")"])
}

allowed(image) if {
	some prefix in settings.allowed_registries
	startswith(image, prefix)
}
