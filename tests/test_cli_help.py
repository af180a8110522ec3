"""Every command and every option of the command line says what it is for in `--help`."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from announcer.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def _missing_help(path: str, parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            described = {choice.dest for choice in action._choices_actions if (choice.help or "").strip()}
            yield from (f"{path} {name}" for name in action.choices if name not in described)
        elif action.help is argparse.SUPPRESS or not (action.help or "").strip():
            yield f"{path} {'/'.join(action.option_strings) or action.dest}"


def test_every_command_and_option_has_help_text() -> None:
    parsers = list(_parsers(build_parser(), "announcer"))
    # the walk reaches the commands the README names, so an empty list cannot pass for a clean one
    assert {"announcer serve", "announcer render", "announcer db upgrade", "announcer sandbox call-in"} <= {
        path for path, _ in parsers
    }
    missing = [item for path, parser in parsers for item in _missing_help(path, parser)]
    assert missing == []


def test_the_help_of_each_command_prints() -> None:
    for path, parser in _parsers(build_parser(), "announcer"):
        text = parser.format_help()
        assert "usage:" in text, path
