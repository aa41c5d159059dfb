"""``portcullis rules ...`` and ``portcullis monitor ...`` register only their own module, so a
``rules test`` over a recording does not pay for the Kubernetes client; the parser they get is
the same for their command lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from webhook import cli

REPO = Path(__file__).resolve().parents[2]


def _choices(parser: object) -> set[str]:
    sub = next(a for a in parser._actions if a.dest == "command")  # type: ignore[attr-defined]
    return set(sub.choices)


def test_a_rules_command_line_builds_only_the_rules_commands() -> None:
    assert _choices(cli.build_parser(["rules", "validate", "x"])) == {"rules"}
    assert _choices(cli.build_parser(["monitor"])) == {"monitor"}
    full = _choices(cli.build_parser(["-v", "rules"]))
    assert {"rules", "monitor", "check", "serve", "audit", "policy"} <= full
    assert _choices(cli.build_parser([])) == full


def test_the_fast_path_parses_like_the_full_parser() -> None:
    argv = ["rules", "test", "rules/", "--events", "e.jsonl", "--match", "first"]
    fast, full = cli.build_parser(argv).parse_args(argv), cli.build_parser(["-v", *argv]).parse_args(argv)
    assert vars(fast) == vars(full)


def test_rules_test_does_not_import_the_kubernetes_client(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text("")
    code = (
        "import sys; from webhook import cli; rc = cli.main(['rules', 'test', 'rules/', '--events', sys.argv[1]]);"
        "print(rc, 'kubernetes' in sys.modules, 'aiohttp' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(events)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.split() == ["0", "False", "False"]
