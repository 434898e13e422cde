"""The command line explains itself: every option has a help text, defaults and choices are shown,
and every subcommand says in a line what it does."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

import broker.cli.main as commands
from broker.cli.args import parser
from broker.cli.main import main
from tests.services import cli


def subcommands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """Every (sub)command with its parser and the one-line help its parent lists it with."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, summaries.get(name)
                yield from subcommands(sub, (*path, name))


ALL = list(subcommands(parser(commands)))
LEAVES = [path for path, sub, _ in ALL
          if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)]


def shown_default(action: argparse.Action) -> bool:
    return action.default not in (None, False, [], argparse.SUPPRESS) and not action.required


def test_every_option_and_argument_has_a_help_text():
    missing = [f"fogmesh {' '.join(path)} {'/'.join(a.option_strings) or a.dest}"
               for path, sub, _ in ALL for a in sub._actions
               if not a.help and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]
    assert missing == []


def test_every_subcommand_has_a_one_line_summary_and_description():
    for path, sub, summary in ALL:
        assert summary and "\n" not in summary, f"fogmesh {' '.join(path)} has no one-line help in its parent's list"
        assert sub.description, f"fogmesh {' '.join(path)} --help has no description"


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_help_runs_and_shows_defaults_and_choices(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # help texts on one line each: a default is never split
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    sub = next(sub for p, sub, _ in ALL if p == path)
    assert sub.description and " ".join(sub.description.split()) in text
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if shown_default(action) and "default" not in (action.help or ""):
            assert f"{action.help} (default: {action.default})" in text, \
                f"fogmesh {' '.join(path)} --help: {action.dest} does not show its default {action.default!r}"
        for choice in action.choices or ():
            assert str(choice) in text, f"fogmesh {' '.join(path)} --help does not list {choice!r}"
    assert "default: False" not in text and "default: None" not in text and "default: []" not in text


def test_the_command_prints_its_help():
    out = cli("--help", timeout_s=30)
    assert out.returncode == 0, out.stderr
    for command in ("status", "forget", "ask", "coordinator"):
        assert command in out.stdout
    out = cli("status", "--help", timeout_s=30, env={"COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "--all-sites" in out.stdout and "(default: 1.0)" in out.stdout


@pytest.mark.parametrize("flags, says", [
    (["--watch", "--interval", "-5"], "--interval"),  # a traceback after the first redraw
    (["--watch", "--interval", "0"], "--interval"),
    (["--watch", "--count", "-1"], "--count"),
    (["--watch", "--json"], "--json"),  # --json was ignored, and the redraws never ended
])
def test_status_refuses_watch_flags_it_cannot_honour_before_it_connects(flags, says, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["status", "--broker", "mqtt://127.0.0.1:1", *flags])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("flags, says", [
    (["--port", "99999"], "--port"),  # an OverflowError traceback
    (["--bind", "10.255.255.1"], "--bind"),  # an address this host does not have: not a port to change
    (["--ws", "http://127.0.0.1:9001"], "ws://"),  # printed as the page's broker; the page could never connect
])
def test_dashboard_says_which_flag_is_wrong(flags, says, capsys):
    assert main(["dashboard", "--broker", "mqtt://127.0.0.1:1", "--port", "0", *flags]) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
