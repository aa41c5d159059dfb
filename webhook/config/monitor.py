"""Config of the runtime monitor (``monitor:``)."""

from __future__ import annotations

from webhook.config.base import Section


class MonitorConfig(Section):
    """Filled in by the runtime monitor issue."""
