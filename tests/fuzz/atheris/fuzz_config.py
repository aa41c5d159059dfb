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

PATH = os.path.join(tempfile.mkdtemp(prefix="portcullis-fuzz-"), "portcullis.yaml")


def test_one_input(data: bytes) -> None:
    with open(PATH, "wb") as fh:
        fh.write(data)
    try:
        config_mod.load(PATH)
    except Exception as exc:
        harness.tolerate(exc, errors.ConfigError)


def main() -> None:
    atheris.Setup(harness.argv(), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.exit(main())
