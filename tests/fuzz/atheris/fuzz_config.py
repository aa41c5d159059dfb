"""atheris: config file bytes → ``config.load`` (YAML, then the strict typed sections)."""

from __future__ import annotations

import os
import sys
import tempfile

import atheris
import harness

with atheris.instrument_imports(include=["webhook"]):
    from webhook import config as config_mod
    from webhook import errors

# An unlinked temp file reached through /proc: nothing is left behind however libFuzzer exits.
_FD, _NAME = tempfile.mkstemp(prefix="portcullis-fuzz-", suffix=".yaml")
os.unlink(_NAME)
PATH = f"/proc/self/fd/{_FD}"


def test_one_input(data: bytes) -> None:
    os.ftruncate(_FD, 0)
    os.pwrite(_FD, data, 0)
    try:
        config_mod.load(PATH)
    except Exception as exc:
        harness.tolerate(exc, errors.ConfigError)


def main() -> None:
    atheris.Setup(harness.argv(), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.exit(main())
