"""Every `dispatcher ...` command the README, the docs and the runbooks show is a real
command with real options and values that parse (issue 16, item 6), so none can rot.

Commands are taken from shell code blocks (a line starting ``dispatcher``, with its
``\\`` continuations, comments cut), to be run as they stand, and from inline code
spans that start with ``dispatcher ``, which may name a command or an option without
the values a run needs. Each is parsed by the CLI itself (click's own parser, every
option's type converted), without running it. Documentation shorthand is read as it
is meant: ``[--flag]`` is the flag, ``...`` and ``…`` stand for nothing.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from dispatcher.cli import main
from dispatcher.gateway.simulator.command import build_arg_parser

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "ops" / "runbooks").glob("*.md")]
)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(dispatcher [^`\n]+)`")
SHORTHAND = re.compile(r"(^|\s)(\.\.\.|…)(?=\s|$)")


def documented_commands() -> list[tuple[str, str, bool]]:
    """(where, command, whole) for every command the documents show; ``whole``: from a
    code block, to run as it stands."""
    found: list[tuple[str, str, bool]] = []
    for document in DOCUMENTS:
        text = document.read_text()
        where = str(document.relative_to(ROOT))
        for block in FENCE.findall(text):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("dispatcher "):
                    found.append((where, _without_comment(line), True))
        prose = FENCE.sub("", text)
        found += [(where, span, False) for span in INLINE.findall(prose)]
    return found


def _without_comment(line: str) -> str:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return shlex.join(list(lexer))


def parse(command: str) -> click.Context:
    """The context the CLI builds for ``command``; click's error if it would refuse."""
    text = SHORTHAND.sub(" ", command.replace("[", " ").replace("]", " "))
    args = shlex.split(text)[1:]
    cmd: click.Command = main
    ctx = cmd.make_context("dispatcher", args)
    while isinstance(cmd, click.Group):
        name, sub, rest = cmd.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None, command
        assert name is not None, command
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub
    if cmd.name == "gateway-sim":
        # Its options are the simulator's own parser's, which click passes through.
        try:
            build_arg_parser("dispatcher gateway-sim").parse_args(ctx.args)
        except SystemExit as stopped:  # argparse exits: 0 after --help, 2 on a refusal
            if stopped.code != 0:
                raise click.UsageError(f"the simulator refuses {ctx.args}") from None
    return ctx


COMMANDS = documented_commands()


def test_the_documents_show_enough_commands_to_mean_something() -> None:
    assert len(COMMANDS) >= 60
    names = {shlex.split(c)[1] for _, c, _ in COMMANDS}
    assert names >= {"send", "retry", "settle", "worker", "serve", "migrate", "state"}


@pytest.mark.parametrize(("where", "command", "whole"), COMMANDS, ids=[c for _, c, _ in COMMANDS])
def test_each_documented_command_parses(where: str, command: str, whole: bool) -> None:
    try:
        parse(command)
    except (click.MissingParameter, click.BadOptionUsage) as missing:
        # A value left out is fine where prose names a command or an option, never in a
        # block meant to be run, and never any other refusal.
        left_out = isinstance(missing, click.MissingParameter) or (
            "requires an argument" in missing.format_message()
        )
        if whole or not left_out:
            pytest.fail(f"{where}: `{command}` does not parse: {missing.format_message()}")
    except click.ClickException as refused:
        pytest.fail(f"{where}: `{command}` does not parse: {refused.format_message()}")


@pytest.mark.parametrize(
    "command",
    [
        "dispatcher retry --jobs 01M8",  # a misspelt option
        "dispatcher settle 01M8 --as maybe --reason r",  # a value out of its choices
        "dispatcher nosuchcommand",
        "dispatcher send --to 07700900123 --at tomorrow hello",  # an unparsable time
        "dispatcher gateway-sim --latency 5",  # not the simulator's flag (--latency-ms)
    ],
)
def test_the_check_refuses_what_the_cli_would(command: str) -> None:
    with pytest.raises(click.ClickException):
        parse(command)


def test_the_simulators_help_names_the_command_typed_and_its_default_credentials() -> None:
    help_text = build_arg_parser("dispatcher gateway-sim").format_help()
    assert help_text.startswith("usage: dispatcher gateway-sim ")
    assert "default: sim-user" in help_text
    assert "default: sim-pass" in help_text
