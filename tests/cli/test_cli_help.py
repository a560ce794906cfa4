"""Every subcommand's --help states each option's default and shows no reStructuredText."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from difftree_rt.cli import build_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _needs_default(action: argparse.Action) -> bool:
    """Options with a value to default (flags are simply off; required ones have none)."""
    return (
        bool(action.option_strings)
        and action.help is not argparse.SUPPRESS
        and not action.required
        and not isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction))
    )


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_help_states_every_default(name: str) -> None:
    parser = _subparsers()[name]
    text = parser.format_help()
    assert "``" not in text, text
    for action in parser._actions:
        if not _needs_default(action):
            continue
        # The help of one option, as rendered: from its flags to the next option's flags.
        flag = action.option_strings[-1]
        block = re.search(rf"\n  {re.escape(action.option_strings[0])}.*?(?=\n  -|\Z)", text, re.S)
        assert block is not None, (flag, text)
        assert "default" in block.group(0), f"{name} {flag}: no default in {block.group(0)!r}"


def test_top_level_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "difftree_rt", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "``" not in out.stdout
    for name in _subparsers():
        assert name in out.stdout
