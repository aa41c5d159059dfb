"""The Falco rules language: ``loader`` (YAML) → ``resolve`` (macros, lists, exceptions) →
``compiler`` (fast Python), with ``parser`` (conditions), ``fields`` and ``output`` beside them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from webhook.runtime.rules import loader, resolve
from webhook.runtime.rules.resolve import Rule, RulesError, RuleSet

__all__ = ["DEFAULT_RULES", "Rule", "RuleSet", "RulesError", "condition", "load"]

# The project's own rules, shipped inside the package (package data), so a non-editable install
# finds them; the repository's ``rules/`` and the chart's ``files/rules/`` link here.
DEFAULT_RULES = Path(__file__).resolve().parent / "default"


def load(paths: Sequence[Path | str]) -> RuleSet:
    """Load rules files in order (a directory: its ``*.yaml``/``*.yml`` files, sorted); raises
    RulesError listing every error with file:line."""
    return resolve.resolve(loader.collect(paths))


def condition(text: str, paths: Sequence[Path | str] = ()) -> Callable[[Mapping[str, Any]], bool]:
    """One condition (macros and lists from ``paths``) as event → bool, no event-type prefilter.

    Raises RulesError (file:line for the rules files, ``<condition>`` for the text itself).
    """
    return resolve.compile_condition(loader.collect(paths), text)
