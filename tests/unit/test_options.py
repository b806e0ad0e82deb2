"""The gate's options: declared once, parsed alike by pytest and ``qtests``, usable from Python.

The command lines are parsed by the real parsers: pytest's (``pytester.parseconfig`` loads the plugin
from its entry point, as a user's pytest does) and the ``qtests`` console command's.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from pytest_qtests.cli.main import build_parser, main
from pytest_qtests.cli.sweep import SWEEP_GATE_OPTIONS
from pytest_qtests.engines.registry import BACKENDS
from pytest_qtests.options import GATE_OPTIONS, GateOptions, build_config
from pytest_qtests.records import QtestsError

pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "fixtures" / "zoo" / "tiny-qwen3next"
POLICIES = ["keep-shared-expert", "keep-linear-attn"]
# A run with every kind of list: models, tasks, replays, trust, mismatch fields, policies.
RUN = ["--reference", "bf16=org/bf16", "--tasks", "zoo", "--backend", "replay", "--limit", "8", "--fail-on", "accuracy:-5pp",
       "--expect", "int4:zoo:accuracy=0.5,rtol=0.1", "--engine-arg", 'compilation_config={"level":0,"x":1}']


def pytest_options(pytester: pytest.Pytester, *args: str) -> GateOptions:
    return GateOptions.from_namespace(pytester.parseconfig(*args).option)


def sweep_options(*args: str) -> GateOptions:
    return GateOptions.from_namespace(build_parser().parse_args(["sweep", "org/model", "--schemes", "W4A16",
                                                                 "-o", "out", *args]))


def test_comma_and_repeated_policy_flags_give_the_same_run(pytester):
    comma = pytest_options(pytester, *RUN, "--model", "int4=org/int4", "--policy", ",".join(POLICIES))
    repeated = pytest_options(pytester, *RUN, "--model", "int4=org/int4", "--policy", POLICIES[0],
                              "--policy", POLICIES[1])
    assert comma == repeated and comma.policies == POLICIES
    assert build_config(comma) == build_config(repeated)
    assert build_config(comma).policies == POLICIES


@pytest.mark.parametrize("option", [o for o in GATE_OPTIONS if o.is_list], ids=lambda o: o.flag)
def test_every_list_flag_takes_commas_and_repetition_alike_unless_its_values_hold_commas(pytester, option):
    comma = getattr(pytest_options(pytester, option.flag, "a=1,b=2"), option.field)
    repeated = getattr(pytest_options(pytester, option.flag, "a=1", option.flag, "b=2"), option.field)
    assert repeated == ["a=1", "b=2"]
    assert comma == (["a=1", "b=2"] if option.commas else ["a=1,b=2"])


def test_values_with_commas_of_their_own_stay_whole():
    config = build_config(GateOptions(
        models=["int4=org/int4"], tasks=["zoo"], expect=["int4:zoo:accuracy=0.5,rtol=0.1"],
        engine_args=['compilation_config={"level":0,"x":1}', "enforce_eager=true"]))
    assert config.engine_args == {"compilation_config": '{"level":0,"x":1}', "enforce_eager": "true"}
    expected = config.expectations.for_run("int4", "zoo")["accuracy"]
    assert (expected.value, expected.rtol) == (0.5, 0.1)


def test_gate_options_from_python_build_the_same_run_as_the_command_line(pytester, tmp_path):
    replays = [f"bf16={tmp_path / 'bf16.jsonl'}", f"int4={tmp_path / 'int4.jsonl'}"]
    from_flags = pytest_options(pytester, *RUN, "--model", "int4=org/int4,int8=org/int8",
                                "--replay", ",".join(replays), "--policy", POLICIES[0], "--no-cache")
    from_python = GateOptions(
        reference="bf16=org/bf16", models=["int4=org/int4", "int8=org/int8"], tasks=["zoo"], backend="replay",
        limit=8, fail_on="accuracy:-5pp", expect=["int4:zoo:accuracy=0.5,rtol=0.1"], replay=replays,
        engine_args=['compilation_config={"level":0,"x":1}'], policies=POLICIES[0], no_cache=True)
    assert from_python == from_flags
    config = build_config(from_python)
    assert config == build_config(from_flags)
    assert [m.label for m in config.models] == ["int4", "int8"] and config.limit == 8 and config.cache_dir is None
    assert config.tolerances["accuracy"] != build_config(GateOptions(models=["int4=org/int4"])).tolerances["accuracy"]


def help_flags(help_text: str, group: str) -> list[str]:
    """The long flags of one option group of a ``--help`` text, in order."""
    lines = help_text.split(group)[1].split("\n\n")[0].splitlines()
    return [line.split()[0].split("=")[0].rstrip(",") for line in lines if line.startswith("  --")]


def test_pytest_registers_every_gate_option_once_and_sweep_the_same_ones(pytester, capsys):
    """Both parsers' flags come from the one table: same flags, same destinations, same parsing."""
    flags = help_flags(pytester.runpytest("--help").stdout.str(), "quantized checkpoint gate:")
    assert flags == [o.flag for o in GATE_OPTIONS] + ["--gpus-per-worker"]

    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "--help"])
    sweep_flags = help_flags(capsys.readouterr().out, "gate (as for pytest qtests):")
    shared = [o for o in GATE_OPTIONS if o.flag in sweep_flags]
    assert [o.flag for o in shared] == sweep_flags and [o.field for o in shared] == list(SWEEP_GATE_OPTIONS)
    samples = {int: "3", float: "0.25", str: "keep-router"}
    for option in shared:
        if option.type is bool:
            argv = [option.flag]
        else:
            argv = [option.flag, next(iter(option.choices)) if option.choices else samples[option.type]]
        assert getattr(sweep_options(*argv), option.field) == getattr(pytest_options(pytester, *argv), option.field)


def test_the_sweep_takes_comma_and_repeated_policies_alike():
    assert sweep_options("--policy", ",".join(POLICIES)) == sweep_options("--policy", POLICIES[0],
                                                                          "--policy", POLICIES[1])
    assert sweep_options("--policy", ",".join(POLICIES)).policies == POLICIES


def test_backend_names_are_the_registry_s_when_the_run_is_built(register_backend):
    """The flag takes any name (a conftest's hook registers its engines after the command line is parsed);
    the run's settings accept exactly the registered ones."""
    [backend] = [o for o in GATE_OPTIONS if o.field == "backend"]
    assert backend.choices is None and all(name in backend.help for name in BACKENDS)
    with pytest.raises(QtestsError, match="unknown backend 'echo': choose one of transformers, vllm, openai, replay"):
        build_config(GateOptions(models=["a=org/a"], backend="echo"))
    register_backend("echo", lambda config, variant: None)
    assert build_config(GateOptions(models=["a=org/a"], backend="echo")).backend == "echo"


def test_suite_keys_are_the_schema_s_properties():
    schema = json.loads(resources.files("pytest_qtests").joinpath("schemas/suite.schema.json").read_text())
    assert {o.suite_key for o in GATE_OPTIONS if o.suite_key} == set(schema["properties"])


def test_flags_override_the_suite_file_and_suite_lists_stay_lists(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text('models = ["int4=org/int4", "int8=org/int8"]\ntasks = ["zoo", "gsm8k"]\nlimit = 5\n'
                     'policies = ["keep-shared-expert", "keep-linear-attn"]\nbackend = "replay"\n')
    from_suite = build_config(GateOptions(suite_file=str(suite)))
    assert [m.label for m in from_suite.models] == ["int4", "int8"] and from_suite.tasks == ["zoo", "gsm8k"]
    assert from_suite.policies == POLICIES and from_suite.limit == 5 and from_suite.backend == "replay"
    overridden = build_config(GateOptions(suite_file=str(suite), tasks="zoo", limit=2, policies=["keep-router"]))
    assert overridden.tasks == ["zoo"] and overridden.limit == 2 and overridden.policies == ["keep-router"]
    assert overridden.models == from_suite.models


def test_a_suite_backend_must_be_registered(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text('models = ["int4=org/int4"]\nbackend = "tpu"\n')
    with pytest.raises(QtestsError, match=f"suite file {suite}: backend: unknown backend 'tpu': choose one of "
                                          f"{', '.join(BACKENDS)}"):
        build_config(GateOptions(suite_file=str(suite)))


def test_an_empty_task_list_is_refused():
    with pytest.raises(QtestsError, match="--tasks is empty"):
        build_config(GateOptions(models=["int4=org/int4"], tasks=","))


def test_the_audit_takes_comma_and_repeated_policies_alike(capsys):
    assert main(["audit", str(TINY), "--json", "--policy", ",".join(POLICIES)]) == 0
    comma = json.loads(capsys.readouterr().out)["policies"]
    assert main(["audit", str(TINY), "--json", "--policy", POLICIES[0], "--policy", POLICIES[1]]) == 0
    assert json.loads(capsys.readouterr().out)["policies"] == comma
    assert [p["rule"] for p in comma] == POLICIES
