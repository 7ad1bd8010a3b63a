"""Every float option of every command and every float config key refuses inf, -inf and nan (and numbers out
of the key's range, such as 1e308 seconds) with one line, never an OverflowError."""

import math

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import FiniteFloat, cli
from pipeline.config import load_config
from pipeline.errors import ActrecError
from pipeline.experiments.tune import parse_param

NOT_FINITE = ["inf", "-inf", "nan", "1e999"]


def float_options():
    """(command, option) for every option whose value is a number with a fraction, found by walking the CLI."""
    found = []
    for name, command in sorted(cli.commands.items()):
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, (click.types.FloatParamType, FiniteFloat)):
                found.append((name, param))
    return found


def test_the_cli_has_float_options_and_each_uses_the_finite_type():
    options = float_options()
    assert ("predict", "--hop") in [(name, param.opts[0]) for name, param in options]
    assert all(isinstance(param.type, FiniteFloat) for _, param in options), [
        f"{name} {param.opts[0]}: {param.type!r}" for name, param in options if not isinstance(param.type, FiniteFloat)]


@pytest.mark.parametrize("command, option", [(name, param.opts[0]) for name, param in float_options()])
@pytest.mark.parametrize("value", NOT_FINITE + ["1e308"])
def test_every_float_option_refuses_non_finite_and_huge_values_in_one_line(tmp_path, command, option, value):
    (tmp_path / "v.mp4").write_bytes(b"")
    args = {"predict": ["predict", str(tmp_path / "v.mp4"), "--checkpoint", str(tmp_path / "c.pt")]}[command]
    result = CliRunner().invoke(cli, [*args, option, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.stderr and "Traceback" not in result.output, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def float_keys() -> list[str]:
    resolved = load_config(None).to_dict()
    return [f"{section}.{key}" for section, values in resolved.items() for key, value in values.items()
            if isinstance(value, float)]


def test_the_schema_has_float_keys():
    assert {"train.lr", "predict.hop", "model.dropout"} <= set(float_keys())


@pytest.mark.parametrize("key", float_keys())
def test_every_float_config_key_refuses_non_finite_values(key):
    for value in NOT_FINITE:
        with pytest.raises(ActrecError, match=rf"{key}: expected a finite number") as caught:
            load_config(None, [f"{key}={value}"])
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("spec", ["float:1e-4:inf", "float:nan:1", "float:-inf:0.5", "int:1:inf"])
def test_tune_ranges_refuse_non_finite_bounds(spec):
    with pytest.raises(ActrecError, match=r"LOW and HIGH must be"):
        parse_param(f"train.lr={spec}" if spec.startswith("float") else f"model.layers={spec}")


def test_the_finite_type_accepts_ordinary_numbers():
    assert FiniteFloat(0.01, 3600).convert("0.25", None, None) == 0.25 and math.isfinite(
        FiniteFloat().convert(1e308, None, None))
