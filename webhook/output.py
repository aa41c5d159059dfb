"""Writing a finished report (``portcullis check``, ``portcullis audit report``) to a file or stdout.

A write that fails is an ``OutputError`` naming where and why, never an internal error and
never a silent success: ``portcullis check ... | head`` under ``set -o pipefail`` must not turn
a run with violations into exit 0 because the reader left early.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from webhook import errors


def write(path: Path | None, text: str) -> None:
    """``text`` (UTF-8) into ``path``, or to stdout when ``path`` is None, flushed."""
    if path is not None:
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise errors.OutputError(f"cannot write the report to {path}: {exc.strerror or exc}") from exc
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        _silence_stdout()
        raise errors.OutputError(f"cannot write the report to stdout: {exc.strerror or exc}") from exc


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's flush at exit does not fail a second time
    (with "Exception ignored ... BrokenPipeError" on stderr); see the ``signal`` module's notes
    on SIGPIPE."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests): nothing to flush at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
