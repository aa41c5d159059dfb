"""The base every config section builds on: strict, frozen, typed records (msgspec)."""

from __future__ import annotations

import msgspec


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A config section: unknown keys are errors, every field has a working default."""
