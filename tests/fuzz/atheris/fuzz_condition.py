"""atheris: Falco condition text → parser → resolver and compiler (``rules.condition``)."""

from __future__ import annotations

import contextlib
import sys

import atheris
import harness

with atheris.instrument_imports(include=["webhook"]):
    from webhook import errors
    from webhook.runtime import rules
    from webhook.runtime.rules import parser

EVENT = {"evt.type": "open", "proc.name": "sh", "fd.name": "/etc/shadow", "evt.num": 1, "user.uid": 0}


def test_one_input(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(256)
    try:
        parser.parse(text)
        matches = rules.condition(text)
    except errors.RuleLoadError:
        return
    # The engine retries such events with coerced values and counts them (Engine._retry).
    with contextlib.suppress(TypeError, AttributeError, ValueError):
        matches(EVENT)


def main() -> None:
    atheris.Setup(harness.argv(), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.exit(main())
