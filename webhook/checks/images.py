"""The images check (placeholder until its issue lands)."""

from __future__ import annotations

from webhook.checks.base import Check
from webhook.checks.services import Services
from webhook.config import Config

CHECK_ID = "images"


def build(config: Config, services: Services) -> Check | None:
    """Not implemented yet: contributes no check."""
    return None
