"""The dealer as a party role (``parties.dealer``): which runs have one, its rank and name."""

from __future__ import annotations

import dataclasses

import pytest

from launch.config import default_party_specs, load_config
from parties.dealer import DEALER_NAME, has_dealer, is_dealer, process_names, world_size
from protocols.registry import part_class, part_names


def _config(*overrides: str):
    config = load_config(list(overrides))
    return dataclasses.replace(config, parties=default_party_specs(config.num_parties))


@pytest.mark.parametrize("suite, dealer", [("dealer", True), ("malicious", True), ("tfp", False)])
def test_a_dealer_is_the_process_after_the_parties(suite, dealer):
    config = _config(f"protocol={suite}")
    parties = ("bank0", "bank1", "bank2")
    assert has_dealer(config) is dealer
    assert process_names(config) == parties + ((DEALER_NAME,) if dealer else ())
    assert world_size(config) == len(process_names(config))
    assert [is_dealer(config, rank) for rank in range(4)] == [False, False, False, dealer]


def test_every_triple_source_that_needs_a_dealer_says_what_it_runs():
    needing = [name for name in part_names("triple_source") if part_class("triple_source", name).needs_dealer]
    assert {"dealer", "authenticated_dealer"} <= set(needing)
    assert all(callable(getattr(part_class("triple_source", name), "make_dealer", None)) for name in needing)


def test_a_source_that_needs_a_dealer_but_gives_none_to_run_is_refused():
    from launch.config import ConfigError
    from protocols import TripleSource, register_part

    @register_part("triple_source", "dealer_without_a_server")
    class DealerWithoutAServer(TripleSource):
        needs_dealer = True

        def install(self, crypten):
            pass

    with pytest.raises(ConfigError, match="dealer_without_a_server needs a dealer process but gives no make_dealer"):
        load_config(["protocol.triple_source=dealer_without_a_server"])
