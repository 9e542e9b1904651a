"""Command-line overrides and the one-line errors for bad settings."""

from __future__ import annotations

import pytest

from launch.cli import main
from launch.config import ConfigError, load_config
from sessions import config_refusal


def test_defaults():
    config = load_config()
    assert (config.num_parties, config.model["_target_"], config.transport.name, config.protocol.name) == (
        3, "mpc.zoo.LogisticRegression", "zmq", "dealer")
    assert config.protocol.triple_source == "dealer" and not config.protocol.allow_insecure
    assert not config.transport.allow_plaintext
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
    refusal = config_refusal([override])
    assert message in refusal
    assert "\n" not in refusal


def test_cli_reports_bad_setting_and_exits_2(capsys):
    assert main(["run", "model=cnn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "cotrain: model=cnn is not available; choose one of custom, logreg, mlp"


USER_DATA = "parties=[{name:alpha,data:/data/alpha.csv},{name:beta,data:/data/beta.csv}]"


def test_tfp_is_refused_with_the_parties_own_data():
    message = config_refusal(["num_parties=2", "protocol=tfp", USER_DATA])
    assert "protocol.triple_source=tfp is for testing only" in message and "protocol.allow_insecure=true" in message
    assert "\n" not in message
    # an explicit choice lets it run, and demo data (no parties given) never needed one
    assert load_config(["num_parties=2", "protocol=tfp", "protocol.allow_insecure=true", USER_DATA]).protocol.name == "tfp"
    assert load_config(["protocol=tfp"]).protocol.name == "tfp"
    assert load_config(["num_parties=2", USER_DATA]).protocol.name == "dealer"


def test_insecure_test_seed_only_inside_the_test_suite(monkeypatch, tmp_path):
    from protocols.prg import TEST_SEED_VARIABLE, TEST_SUITE_VARIABLE, insecure_test_seed

    monkeypatch.setenv(TEST_SEED_VARIABLE, "7")
    assert insecure_test_seed() == "7"  # tests/conftest.py set the marker for this process
    elsewhere = tmp_path / "conftest.py"
    elsewhere.write_text("")
    for marker in (None, str(elsewhere)):  # no marker, or one that is not this tree's tests/conftest.py
        if marker is None:
            monkeypatch.delenv(TEST_SUITE_VARIABLE)
        else:
            monkeypatch.setenv(TEST_SUITE_VARIABLE, marker)
        with pytest.raises(ConfigError, match=f"{TEST_SEED_VARIABLE} is set, which would make every secret "
                                              "predictable; it is honoured only inside cotrain's own test suite"):
            load_config()


def test_dataclass_defaults_agree_with_the_yaml_defaults():
    from dataclasses import asdict

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from launch.config import CONF_DIR
    from parties.config import RunConfig

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        composed = OmegaConf.to_container(compose(config_name="config"), resolve=True)
    schema = asdict(RunConfig())
    schema.pop("score")  # set by `cotrain predict`, never from YAML
    differences = []

    def compare(yaml: object, default: object, path: str) -> None:
        if isinstance(yaml, dict) and isinstance(default, dict) and path != "model.":  # model: _target_ + its arguments
            for key in sorted(set(yaml) | set(default)):
                if key not in yaml or key not in default:
                    differences.append(f"{path}{key}: only in the {'dataclass' if key in default else 'YAML'}")
                else:
                    compare(yaml[key], default[key], f"{path}{key}.")
        elif yaml != default:
            differences.append(f"{path[:-1]}: YAML {yaml!r}, dataclass {default!r}")

    compare(composed, schema, "")
    assert differences == []


def _refused_before_any_party_starts(tmp_path, capsys, *overrides: str) -> str:
    """``cotrain run`` stops with exit code 2 and one line, and no party ever ran (a party's
    first act is to write under output_dir)."""
    code = main(["run", f"output_dir={tmp_path / 'outputs'}", *overrides])
    message = capsys.readouterr().err.strip()
    assert code == 2 and message.startswith("cotrain: ") and "\n" not in message
    assert not (tmp_path / "outputs").exists()
    return message


@pytest.mark.parametrize("overrides, message", [
    (["train.reveal_to=[bank9]"], "train.reveal_to names 'bank9', which is not a party"),
    (["device=cuda:first"], "device=cuda:first"),
    (["log_level=LOUD"], "log_level=LOUD is unknown"),
    (["launch.mode=ship"], "launch.mode=ship is unknown"),
    (["data.partition=vertical", "data.label_party=3"], "data.label_party=3 is not a party rank (0..2)"),
    (["launch=host", "party.rank=0", "transport.peers={bank0:'tcp://127.0.0.1:5000'}"],
     "transport.peers has no address for bank1, bank2, dealer"),
    (["protocol.plugins=[no_such_module]"], "protocol.plugins: cannot import 'no_such_module'"),
    (["transport.max_message_bytes=0"], "transport.max_message_bytes=0 must be positive"),
])
def test_settings_once_checked_inside_the_parties_are_refused_first(tmp_path, capsys, overrides, message):
    assert message in _refused_before_any_party_starts(tmp_path, capsys, *overrides)


def test_a_launchers_party_count_is_checked_against_every_setting():
    from launch.launchers import resolve

    overrides = ["protocol=tfp", "train.evaluator=2"]  # rank 2 is a party of the default 3, not of torchrun's 2
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "31000"}
    with pytest.raises(ConfigError, match=r"train.evaluator=2 is not a party rank \(0..1\)"):
        resolve(load_config(overrides), overrides, torchrun)


def test_every_triple_source_is_offered_including_those_not_imported_yet():
    from protocols.registry import part_names

    offered = config_refusal(["protocol.triple_source=nope"]).partition("choose one of ")[2].split(", ")
    assert offered == part_names("triple_source")
    assert {"tfp", "dealer", "ot", "authenticated_dealer"} <= set(offered)


def test_peers_and_public_keys_take_party_names_as_documented():
    peers = "{bank0:'tcp://10.0.0.1:5000',bank1:'tcp://10.0.0.2:5000',bank2:'tcp://10.0.0.3:5000',dealer:'tcp://10.0.0.4:5000'}"
    config = load_config(["launch=host", "party.rank=1", f"transport.peers={peers}", "transport.public_keys={bank0:abc}"])
    assert config.transport.peers["dealer"] == "tcp://10.0.0.4:5000" and config.transport.public_keys == {"bank0": "abc"}
