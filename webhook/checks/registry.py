"""Build the configured checks in their fixed order (privilege, runtimeclass, images, gpu, rego)."""

from __future__ import annotations

from webhook.checks import gpu, images, privilege, rego, runtimeclass
from webhook.checks.base import Check
from webhook.checks.services import Services
from webhook.config import Config

_BUILDERS = (privilege, runtimeclass, images, gpu, rego)


def build_checks(config: Config, services: Services, *, skip: frozenset[str] = frozenset()) -> list[Check]:
    """Every enabled check for ``config``; a check whose section is unconfigured may return None."""
    checks: list[Check] = []
    for module in _BUILDERS:
        check_id = module.CHECK_ID
        if check_id in skip or not config.check_settings(check_id).enabled:
            continue
        check = module.build(config, services)
        if check is not None:
            checks.append(check)
    return checks
