"""synkler.cli.main in-process: where options may stand, --debug=pika, help, completion, the exit status
of a closed pipe."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from synkler.cli import main as cli
from synkler.cli import parser as cli_parser
from synkler.cli.cmd_completion import completion_script
from synkler.errors import ExitStatus


def parse(*argv: str) -> argparse.Namespace:
    return cli_parser.build_parser().parse_args(cli_parser.split_debug(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "x.conf", "-v", "status", "--json"],
        ["status", "-c", "x.conf", "-v", "--json"],
        ["-v", "status", "--json", "--config", "x.conf"],
        ["--config=x.conf", "status", "--verbose", "--json"],
    ],
)
def test_global_options_may_stand_before_or_after_the_command(argv):
    args = parse(*argv)
    assert (args.command, args.config, args.verbose, args.debug, args.json) == (
        "status",
        "x.conf",
        True,
        False,
        True,
    )


def test_an_option_given_before_the_command_is_not_reset_by_the_command():
    args = parse("-c", "x.conf", "--debug", "run")
    assert (args.command, args.config, args.debug, args.verbose) == ("run", "x.conf", True, False)


def test_no_command_is_run_with_the_options_given():
    args = parse("-c", "x.conf", "-v")
    assert (args.command, args.config, args.verbose) == (None, "x.conf", True)


def test_debug_pika_is_debug_and_pika_s_own_lines():
    assert (parse("--debug").debug, parse("--debug").debug_pika) == (True, False)
    args = parse("check", "--debug=pika")
    assert (args.command, args.debug, args.debug_pika) == ("check", True, True)
    assert cli_parser.split_debug(["config", "migrate", "--", "--debug=pika"]) == [
        "config",
        "migrate",
        "--",
        "--debug=pika",
    ]


def test_other_debug_values_are_refused(capsys):
    with pytest.raises(SystemExit) as info:
        parse("--debug=broker", "status")
    assert info.value.code == 2
    assert "--debug" in capsys.readouterr().err


def test_config_migrate_takes_the_old_file_and_an_output_after_or_before_global_options():
    args = parse("config", "migrate", "old.conf", "-o", "new.conf", "-v")
    assert (args.command, args.config_command, args.old, args.output, args.verbose) == (
        "config",
        "migrate",
        "old.conf",
        "new.conf",
        True,
    )


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_command_has_the_global_options_and_an_example():
    found = list(_commands(cli_parser.build_parser()))
    assert {path for path, _ in found} >= {(), ("run",), ("status",), ("check",), ("config", "migrate")}
    for path, parser in found:
        assert {"-c", "--config", "-v", "--verbose", "--debug"} <= set(parser._option_string_actions), path
        text = parser.format_help()
        assert "examples:\n  synkler " in text, path


def test_a_command_added_later_gets_the_global_options_too():
    parser = argparse.ArgumentParser()
    cli_parser.add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("retry").add_argument("name")
    cli_parser.spread_global_options(parser)
    args = parser.parse_args(["-v", "retry", "x", "-c", "y.conf"])
    assert (args.command, args.name, args.verbose, args.config) == ("retry", "x", True, "y.conf")


def test_the_bash_completion_script_knows_commands_and_options():
    script = completion_script(cli_parser.build_parser())
    assert "complete -F _synkler synkler" in script
    for word in ("run", "status", "check", "migrate", "--json", "--config", "--output"):
        assert word in script
    assert "--debug-pika" not in script  # hidden: written --debug=pika
    result = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_completion_in_bash_offers_commands_then_their_options(tmp_path):
    script = tmp_path / "synkler.bash"
    script.write_text(completion_script(cli_parser.build_parser()))

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (
            f"source {script}; COMP_WORDS=(synkler {line}); COMP_CWORD={len(words)}; "
            "_synkler; printf '%s\\n' \"${COMPREPLY[@]}\""
        )
        return subprocess.run(
            ["bash", "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()

    assert {"run", "status", "check", "config"} <= set(complete(""))
    assert complete("st") == ["status"]
    assert complete("status", "--j") == ["--json"]
    assert complete("config", "mi") == ["migrate"]
    assert complete("-c", "x.conf", "status", "--j") == ["--json"]


def test_a_closed_stdout_ends_main_with_status_141_and_no_traceback(monkeypatch, capsys):
    def closed(argv):
        raise BrokenPipeError

    monkeypatch.setattr(cli, "_main", closed)
    assert cli.main(["status"]) == ExitStatus.BROKEN_PIPE == 141
    assert capsys.readouterr().err == ""
