"""The ``portcullis`` command: parse arguments and hand off to the face that owns the command.

Each face owns its sub-commands in ``<face>/commands.py`` with a ``register(subparsers)``
function; parsers set ``func(args) -> int`` (the exit code). Exit codes: 0 ok, 1 policy
violations / tampering found, 2 usage or input error (and any unexpected failure, reported as an
internal error; ``-v`` adds its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from webhook import __version__, errors
from webhook.core import shown

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


# Sub-commands whose module is imported alone when the command line names them: the others pull
# in the Kubernetes client and aiohttp (~1 s), which `rules test` over a recording would pay on
# every run. Any other command line (help included) registers every module.
_ONLY = {"rules": "webhook.runtime.rules.commands", "monitor": "webhook.runtime.monitor_commands"}

# What a newcomer reads first (``portcullis --help``): what the program is, not how it is built.
DESCRIPTION = """\
Portcullis: admission and runtime security for Kubernetes container and GPU/AI workloads.
One set of checks behind four faces: an admission webhook (Pod Security Standards, runtime
classes, image signatures, GPU quota, Rego policies), the same checks over manifests in CI,
a runtime monitor speaking the Falco rules language over eBPF events, and a tamper-evident
audit log of every decision and alert."""

EPILOG = """\
Start with `portcullis demo` (no cluster needed). `portcullis COMMAND --help` shows a
command's options. Exit codes: 0 ok, 1 violations or tampering found, 2 usage or input error."""


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message on stderr."""


class _CommandParser(_Parser):
    """A sub-command's parser: an option it does not know is reported with its own usage.

    argparse hands a sub-command's leftovers up to the top-level parser, whose usage line says
    nothing about the command that was mistyped; refusing them here names the right one.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every face's sub-commands (only the named one's when ``argv`` starts with
    a command of ``_ONLY``: the same parser for that command line, built faster)."""
    parser = _Parser(
        prog="portcullis",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"portcullis {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more detail on stderr, and the traceback of an internal error (-vv: debug)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    only = _ONLY.get(argv[0]) if argv else None
    for name in (only,) if only else _COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    # Long-running commands (serve, monitor) say what they do at INFO; one-shot ones stay quiet.
    quiet = getattr(args, "log_level", logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else min(logging.INFO, quiet) if args.verbose else quiet,
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
        print(f"portcullis: error: {shown.terminal_lines(str(exc))}", file=sys.stderr)  # names may be hostile
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # an unexpected failure must never look like success or a verdict
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"portcullis: internal error: {type(exc).__name__}: {shown.terminal_lines(str(exc))}", file=sys.stderr)
        if not args.verbose:
            print("portcullis: run again with -v for the traceback, and please report it", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
