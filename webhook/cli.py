"""The ``portcullis`` command: a thin layer that parses arguments and hands off to each face.

Each face owns its sub-commands in ``<face>/commands.py`` with a ``register(subparsers)``
function; parsers set ``func(args) -> int`` (the exit code). Exit codes: 0 ok, 1 policy
violations / tampering found, 2 usage or input error (and any unexpected failure).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from webhook import __version__, errors

# Faces that contribute sub-commands, in the order they appear in --help.
_COMMAND_MODULES = (
    "webhook.admission.commands",  # serve, certs
    "webhook.ci.commands",  # check
    "webhook.signatures.commands",  # images export
    "webhook.runtime.rules.commands",  # rules
    "webhook.runtime.monitor_commands",  # monitor
    "webhook.policy.commands",  # policy
    "webhook.audit.commands",  # audit
    "webhook.scan.commands",  # scan
    "webhook.replay.commands",  # replay
)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message on stderr."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="portcullis", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"portcullis {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except errors.PortcullisError as exc:
        print(f"portcullis: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # an unexpected failure must never look like success or a verdict
        logging.getLogger("portcullis").debug("unexpected failure", exc_info=True)
        print(f"portcullis: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
