"""The ``portcullis`` help text: every option says what it does, metavars are consistent, and a
usage error names the sub-command it belongs to."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from webhook import cli


def _parsers(
    parser: argparse.ArgumentParser, path: str = "portcullis"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _subparser_actions(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction[argparse.ArgumentParser]]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def test_every_option_and_argument_of_every_command_has_help() -> None:
    missing = [
        f"{path} {'/'.join(action.option_strings) or action.dest}"
        for path, parser in _parsers(cli.build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help and action.help.strip())
    ]
    assert missing == []


def test_every_command_has_a_one_line_help() -> None:
    missing = [
        f"{path} {choice.dest}"
        for path, parser in _parsers(cli.build_parser())
        for action in _subparser_actions(parser)
        for choice in action._choices_actions
        if not (choice.help and choice.help.strip())
    ]
    assert missing == []


def test_commands_are_COMMAND_at_the_top_and_SUBCOMMAND_below() -> None:
    seen = {
        path: [a.metavar for a in _subparser_actions(parser)]
        for path, parser in _parsers(cli.build_parser())
        if _subparser_actions(parser)
    }
    assert seen.pop("portcullis") == ["COMMAND"]
    assert seen
    assert all(metavars == ["SUBCOMMAND"] for metavars in seen.values()), seen


def test_the_top_level_description_says_what_portcullis_is() -> None:
    text = cli.build_parser().format_help()
    assert "admission webhook" in text
    assert "runtime monitor" in text
    assert "thin layer" not in text


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["check", "--frobnicate", "x.yaml"], "usage: portcullis check "),
        (["serve", "--frobnicate"], "usage: portcullis serve "),
        (["audit", "verify", "--log", "l", "--pub", "k", "--frobnicate"], "usage: portcullis audit verify "),
        (["rules", "validate", "r.yaml", "--frobnicate"], "usage: portcullis rules validate "),
    ],
)
def test_an_unknown_option_prints_the_usage_of_its_own_command(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage)
    assert "unrecognized arguments: --frobnicate" in err


def test_the_same_option_has_the_same_metavar_everywhere() -> None:
    metavars: dict[str, set[str]] = {}
    for _path, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if "--config" in action.option_strings:
                metavars.setdefault("--config", set()).add(str(action.metavar))
    assert metavars == {"--config": {"FILE"}}
