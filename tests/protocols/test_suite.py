"""The registry, suites from config, and end-to-end training with every built-in suite."""

from __future__ import annotations

import pytest

from launch.config import ConfigError, load_config
from protocols import PART_KINDS, ProtocolConfig, ProtocolSuite, part_names, register_part
from protocols.parts import ProtocolPart
from protocols.registry import part_class

SMALL = ["data.rows=300", "data.test_rows=400", "train.epochs=1", "train.batch_size=64"]


def test_every_kind_has_its_builtin_parts():
    import protocols.dealer  # noqa: F401
    import protocols.ot  # noqa: F401

    assert set(PART_KINDS) == {"triple_source", "prg", "truncation", "comparison", "check"}
    assert {"tfp", "dealer", "ot"} <= set(part_names("triple_source"))
    assert set(part_names("prg")) == {"aes_ctr", "chacha20"}  # no non-cryptographic generator
    assert {"pairs", "local", "topbits"} <= set(part_names("truncation"))
    assert "crypten" in part_names("comparison") and "none" in part_names("check")


def test_unknown_names_and_clashes_are_refused():
    with pytest.raises(ValueError, match="choose one of"):
        part_class("prg", "md5")
    with pytest.raises(ValueError, match="unknown protocol part kind"):
        register_part("hash", "x")

    class Other(ProtocolPart):
        def install(self, crypten):
            pass

    with pytest.raises(ValueError, match="already registered"):
        register_part("prg", "aes_ctr")(Other)


def test_suite_from_config_names_one_part_per_kind():
    suite = ProtocolSuite(ProtocolConfig(name="x", triple_source="dealer", prg="chacha20", truncation="local"))
    assert set(suite.parts) == set(PART_KINDS) and suite.needs_dealer
    assert "chacha20" in suite.describe()["prg"]
    counters = suite.counters()["triple_source"]
    assert set(counters) == {"calls", "tuples", "offline_bytes", "offline_rounds", "online_bytes", "online_rounds"}


@pytest.mark.parametrize("name, source", [("tfp", "tfp"), ("dealer", "dealer"), ("ot", "ot_he")])
def test_protocol_yaml_files_load(name, source):
    config = load_config([f"protocol={name}", "num_parties=2"])
    assert config.protocol.triple_source == source
    assert (config.protocol.truncation, config.protocol.comparison) == ("topbits", "packed")


def test_ot_with_three_parties_is_a_config_error():
    with pytest.raises(ConfigError, match="triple_source=ot_he is a 2-party protocol"):
        load_config(["protocol=ot", "num_parties=3"])


def test_the_dealer_rank_is_a_valid_party_rank():
    assert load_config(["protocol=dealer", "num_parties=2", "party.rank=2"]).party.rank == 2
    with pytest.raises(ConfigError):
        load_config(["protocol=tfp", "num_parties=2", "party.rank=2"])


@pytest.mark.slow
@pytest.mark.parametrize("protocol, parties, extra", [
    ("tfp", 2, []),
    ("tfp", 3, ["protocol.prg=chacha20"]),
    ("dealer", 2, []),
    ("dealer", 3, []),
    ("ot", 2, []),
])
def test_training_matches_plaintext(job, protocol, parties, extra):
    summary = job(f"protocol={protocol}", f"num_parties={parties}", *SMALL, *extra)
    assert abs(summary["gaps"]["auc"]["gap"]) <= 0.01
    assert all(entry["within_tolerance"] for entry in summary["gaps"].values())
    names = [party["name"] for party in summary["per_party"]]
    assert names[-1] == "dealer" if protocol == "dealer" else "dealer" not in names
    for party in summary["per_party"]:
        if party["name"] == "dealer":  # its traffic is in the table and the totals
            assert party["bytes_sent"] > 0 and party["protocol_parts"]["dealer"]["requests"] > 0
            continue
        parts = party["protocol_parts"]
        assert set(parts) == set(PART_KINDS)
        assert parts["triple_source"]["tuples"] > 0 and parts["truncation"]["calls"] > 0
        assert parts["prg"]["offline_bytes"] > 0  # the seed agreement
        if protocol in ("dealer", "ot"):
            assert parts["triple_source"]["offline_bytes"] > 0


def test_the_choices_offered_in_errors_are_every_built_in_part():
    """In a fresh process, before any part module is imported, the error for an unknown name
    offers exactly the parts that exist once every module of ``protocols`` is imported."""
    import subprocess
    import sys

    program = """
import importlib, pkgutil
import protocols
from protocols.registry import PART_KINDS, part_class, part_names
offered = {}
for kind in PART_KINDS:
    try:
        part_class(kind, "no-such-part")
    except ValueError as error:
        offered[kind] = str(error).rpartition("choose one of ")[2].split(", ")
for module in pkgutil.walk_packages(protocols.__path__, "protocols."):
    importlib.import_module(module.name)
print(all(offered[kind] == part_names(kind) for kind in PART_KINDS), offered)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, check=True)
    complete, _, offered = result.stdout.strip().partition(" ")
    assert complete == "True", offered
    assert "authenticated_dealer" in offered and "tfp" in offered
