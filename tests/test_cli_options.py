"""Every command agrees: each option has help in one style with its default shown, and ``--version`` works.

Walks ``mrdl`` (every subcommand its group lists), ``mrdl-export`` and ``mrdl-bench``; also checks
that ``mrdl predict`` and ``mrdl serve`` take their options from the options dataclasses (a field
is an option, with the field's default and help) and that ``--threads`` means one thing everywhere.
"""

from __future__ import annotations

from dataclasses import fields
from importlib.metadata import version

import click
import pytest
from click.testing import CliRunner

from mrdl_apps.bench import main as bench_main
from mrdl_apps.cli import main as mrdl_main
from mrdl_apps.export import main as export_main


def _commands() -> list[tuple[tuple[str, ...], click.Command, click.Command]]:
    """(argv prefix, root command, command) for every command and subcommand."""
    found = [((), mrdl_main, mrdl_main), ((), export_main, export_main), ((), bench_main, bench_main)]
    context = click.Context(mrdl_main)
    for name in mrdl_main.list_commands(context):
        found.append(((name,), mrdl_main, mrdl_main.get_command(context, name)))
    return found


COMMANDS = _commands()
PROPER_NAMES = {"mrdl", "torch", "gRPC", "open_clip", "lambda_3"}  # names that start a sentence in lower case
IDS = [" ".join([root.name or "mrdl", *argv]) for argv, root, _ in COMMANDS]


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.name not in ("help", "version")]


@pytest.mark.parametrize(("argv", "root", "command"), COMMANDS, ids=IDS)
def test_every_option_has_help_in_one_style(argv, root, command):
    problems = []
    for option in _options(command):
        text = (option.help or "").strip()
        if not text:
            problems.append(f"{option.opts[0]}: no help")
        elif not (text[0].isupper() or text.split()[0].rstrip(":,") in PROPER_NAMES):
            problems.append(f"{option.opts[0]}: help should start as a sentence (capital first): {text!r}")
        if option.show_default is False and option.default is not None:  # None: the help names the default
            problems.append(f"{option.opts[0]}: show_default=False hides its default")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("argv", "root", "command"), COMMANDS, ids=IDS)
def test_every_command_has_version_and_shows_defaults(argv, root, command):
    result = CliRunner().invoke(root, [*argv, "--version"])
    assert result.exit_code == 0, result.output
    assert f"version {version('mrdl')}" in result.output
    help_text = CliRunner().invoke(root, [*argv, "--help"])
    if command.add_help_option:  # a stand-in for a missing extra has none
        assert help_text.exit_code == 0 and "--version" in help_text.output, help_text.output
        context = root.make_context(root.name, [*argv, "--help"], resilient_parsing=True)
        assert context.show_default is True and context.help_option_names == ["-h", "--help"]


@pytest.mark.parametrize("name", ["predict", "serve"])
def test_predict_and_serve_options_are_the_fields(name):
    from mrdl_runtime.options import LoadOptions, PredictOptions, command_line_flag
    from mrdl_runtime.serving import SERVE_PREDICT_DEFAULTS, ServeOptions

    command = mrdl_main.get_command(click.Context(mrdl_main), name)
    by_name = {option.name: option for option in _options(command)}
    classes = [(LoadOptions, LoadOptions()),
               (PredictOptions, SERVE_PREDICT_DEFAULTS if name == "serve" else PredictOptions())]
    if name == "serve":
        classes.append((ServeOptions, ServeOptions()))
    for options_class, defaults in classes:
        for option_field in fields(options_class):
            flag = command_line_flag(option_field)
            if flag is None:  # library-only (predict's own --progress is the files' bar, not this field)
                continue
            option = by_name[option_field.name]
            assert flag in option.opts and option.help == option_field.metadata["help"]
            default = getattr(defaults, option_field.name)
            assert option.default == (default if not isinstance(default, bool) or option.is_flag
                                      else str(default).lower())
    assert "max_pixels" in by_name and by_name["max_pixels"].default == (16_777_216 if name == "serve"
                                                                          else 250_000_000)


def test_bench_and_train_options_are_the_fields():
    """mrdl-bench's options are BenchOptions' fields and mrdl train's TrainOptions' and Hardware's, each built by
    the one builder (mrdl_apps.options.field_options): flag, help and default from the field, in field order."""
    from mrdl.train_options import Hardware, TrainOptions
    from mrdl_bench.options import DEFAULT_OUT, BenchOptions
    from mrdl_runtime import OptionsError
    from mrdl_runtime.options import command_line_flag

    train = mrdl_main.get_command(click.Context(mrdl_main), "train")
    for command, classes, defaults in ((bench_main, [BenchOptions], {"out": DEFAULT_OUT}),
                                       (train, [TrainOptions, Hardware], {})):
        by_name = {option.name: option for option in _options(command)}
        for options_class in classes:
            cli_fields = [f for f in fields(options_class) if command_line_flag(f) is not None]
            assert [name for name in by_name if name in {f.name for f in cli_fields}] == [f.name for f in cli_fields]
            for option_field in cli_fields:
                option = by_name[option_field.name]
                assert command_line_flag(option_field).split("/")[0] in option.opts
                assert option.help == option_field.metadata["help"]
                assert option.default == defaults.get(option_field.name, option_field.default)
        if command is bench_main:
            assert set(by_name) - {f.name for f in fields(BenchOptions)} == {"ckpt", "model_dir"}
            assert isinstance(by_name["out"].type, click.Path) and not by_name["out"].type.file_okay
        else:
            assert set(by_name) - {f.name for f in fields(TrainOptions)} - {f.name for f in fields(Hardware)} == {
                "config_name", "clip_weights", "threads", "max_description_chars", "max_table_mib", "max_rows"}
    for changes in ({"iters": 0}, {"threads": -1}, {"min_dice": 1.5}, {"serving_protocol": "udp"}):
        with pytest.raises(OptionsError, match=f"^{next(iter(changes))} must be"):
            BenchOptions(**changes)
    refused = CliRunner().invoke(bench_main, ["--ckpt", "c", "--model-dir", "m", "--iters", "0"])
    assert refused.exit_code == 2 and "--iters" in refused.output


def test_threads_means_one_thing():
    """0 is the runtime's default (one per physical core available) in predict, serve and mrdl-bench."""
    context = click.Context(mrdl_main)
    threads = [option for command in (mrdl_main.get_command(context, "predict"),
                                      mrdl_main.get_command(context, "serve"), bench_main)
               for option in _options(command) if option.name == "threads"]
    assert len(threads) == 3
    for option in threads:
        assert option.default == 0 and "0: the runtime's default" in option.help


def test_an_unhandled_mrdl_error_is_one_line():
    """The group turns a project error that a subcommand does not catch into ``Error: ...`` and exit 1."""
    from mrdl_apps.cli import LazyGroup
    from mrdl_runtime import MrdlError, OptionsError

    @click.group(cls=LazyGroup)
    def group() -> None:
        pass

    @group.command("fails")
    def fails() -> None:
        raise OptionsError("overlap must be a number in [0, 1), got 2")

    @group.command("crashes")
    def crashes() -> None:
        raise KeyError("not a project error")

    result = CliRunner().invoke(group, ["fails"])
    assert result.exit_code == 1 and result.output == "Error: overlap must be a number in [0, 1), got 2\n"
    assert issubclass(OptionsError, MrdlError) and issubclass(OptionsError, ValueError)
    crashed = CliRunner().invoke(group, ["crashes"])
    assert crashed.exit_code == 1 and isinstance(crashed.exception, KeyError)  # not hidden behind one line
