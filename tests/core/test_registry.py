"""The method registry: one registration per method drives the config, the CLI's choices, auto's stages and the
options a job of each method may set."""

import json

import pydantic
import pytest
import typer.main

from squeezer.cli.main import app
from squeezer.core.config import AccuracyTarget, AutoConfig, CompressConfig, DropType
from squeezer.core.events import EventStage
from squeezer.core.methods import auto
from squeezer.core.methods.registry import MethodName, method, methods, structural_names


def _cli_choices(command: str, option: str) -> list[str]:
    """The choices click offers for a command's option (typer builds them from the option's annotation)."""
    group = typer.main.get_command(app)
    (param,) = [p for p in group.commands[command].params if p.name == option]  # type: ignore[attr-defined]
    return [str(choice) for choice in param.type.choices]


def test_every_method_has_one_registration_its_options_field_and_a_handler():
    assert [m.name for m in methods()] == list(MethodName)
    for registered in methods():
        assert CompressConfig.model_fields[registered.name].annotation is registered.options
        assert registered.handler().__name__ == f"compress_{registered.name}"


@pytest.mark.parametrize("command", ["compress", "submit"])
def test_the_cli_offers_the_registered_methods_and_drop_types(command):
    assert _cli_choices(command, "method") == [str(m.name) for m in methods()]
    assert _cli_choices(command, "drop_type") == [str(d) for d in DropType]


def test_auto_runs_the_methods_its_registration_combines_and_offers_the_structural_ones():
    assert list(auto.STAGES) == list(method(MethodName.AUTO).combines)
    assert [m.name for m in auto.STAGES.values() if m.structural] == structural_names()
    schema = AutoConfig.model_json_schema()["properties"]["structural"]
    assert schema["items"]["enum"] == [str(name) for name in structural_names()]
    with pytest.raises(pydantic.ValidationError, match="Input should be 'filter' or 'group'"):
        AutoConfig(structural=["lwct"])


@pytest.mark.parametrize("name", list(MethodName))
def test_options_of_a_method_the_job_does_not_run_are_refused_by_name(name):
    foreign = [m for m in methods() if m.name not in method(name).reads]
    for other in foreign:
        option = next(iter(other.options.model_fields))
        value = {"calibration_samples": 7, "structural": ["group"]}.get(option, 7)
        with pytest.raises(pydantic.ValidationError) as refused:
            CompressConfig.model_validate({"method": name, other.name: {option: value}})
        assert f"{other.name}.{option}" in str(refused.value)
    assert name != MethodName.AUTO or not foreign  # auto reads every other method's options


def test_auto_takes_the_options_of_the_methods_it_runs():
    options = {"lwct": {"sparsity": 0.5}, "filter": {"levels": [0.3]}, "int8": {"per_channel": False}}
    config = CompressConfig.model_validate({"method": "auto", **options})
    assert (config.lwct.sparsity, config.filter.levels, config.int8.per_channel) == (0.5, [0.3], False)


@pytest.mark.parametrize("name", list(MethodName))
def test_a_config_dump_validates_back_to_the_same_config(name):
    """Dumps (the submission check's payload, the worker's, a stored spec) carry every method's defaults."""
    config = CompressConfig(method=name, target=AccuracyTarget(max_drop=2.0, drop_type="relative"))
    assert CompressConfig.model_validate(json.loads(config.model_dump_json())) == config
    assert config.target.drop_type is DropType.RELATIVE and config.method is MethodName(name)


def test_an_option_set_to_its_default_changes_nothing_and_is_accepted():
    assert CompressConfig(method="filter", lwct={"walk": "group"}).method == MethodName.FILTER


def test_event_stages_are_strings_on_the_wire():
    assert json.dumps({"stage": EventStage.CHECKPOINT}) == '{"stage": "checkpoint"}'
