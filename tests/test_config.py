"""Command-line overrides and the one-line errors for bad settings."""

from __future__ import annotations

import pytest

from launch.cli import main
from launch.config import ConfigError, load_config


def test_defaults():
    config = load_config()
    assert (config.num_parties, config.model["_target_"], config.transport.name, config.protocol.name) == (
        3, "mpc.zoo.LogisticRegression", "zmq", "tfp")
    assert config.data.partition == "horizontal"


def test_documented_overrides():
    config = load_config(["num_parties=5", "model=mlp", "data.partition=vertical", "data.rows=123",
                          "train.epochs=2", "train.batch_size=32", "train.lr=0.1", "seed=9",
                          "transport=gloo", "protocol=tfp"])
    assert (config.num_parties, config.model["_target_"], config.data.partition, config.data.rows) == (
        5, "mpc.zoo.MLP", "vertical", 123)
    assert (config.train.epochs, config.train.batch_size, config.train.lr, config.seed) == (2, 32, 0.1, 9)


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_parties=6", "num_parties=6 is out of range; allowed values are 2..5"),
        ("num_parties=1", "num_parties=1 is out of range"),
        ("model=cnn", "model=cnn is not available; choose one of custom, logreg, mlp"),
        ("transport=carrier-pigeon", "transport=carrier-pigeon is not available; choose one of"),
        ("protocol=magic", "protocol=magic is not available; choose one of"),
        ("data.partition=diagonal", "data.partition=diagonal is not allowed; choose one of horizontal, vertical"),
        ("train.epochs=0", "train.epochs=0 must be at least 1"),
        ("train.batch_size=0", "train.batch_size=0 must be at least 1"),
        ("train.lr=-1", "train.lr=-1.0 must be in (0, 10]"),
        ("train.epochs=many", "train.epochs"),
        ("data.rows=5", "data.rows=5 is too small"),
    ],
)
def test_bad_values_give_one_line_errors(override, message):
    with pytest.raises(ConfigError) as error:
        load_config([override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_cli_reports_bad_setting_and_exits_2(capsys):
    assert main(["run", "model=cnn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "cotrain: model=cnn is not available; choose one of custom, logreg, mlp"
