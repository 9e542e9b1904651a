"""Adding a primitive: a new triple source, defined here, registered, trained with.

This file is the worked example behind README's "Add a primitive" section. The source below
is CrypTen's trusted first party again, under a new name, with its own counters: the point
is the plumbing a new primitive needs, not the primitive.
"""

from __future__ import annotations

from typing import Any

import pytest

from protocols import TripleSource, register_part
from protocols.crypten_hooks import drop_provider, meter_online_tuple_use, unmeter_online_tuple_use, use_provider
from protocols.tfp import counting_provider

NAME = "example_tfp"


@register_part("triple_source", NAME)  # 1. register under a name the config can use
class ExampleTripleSource(TripleSource):
    testing_only = True  # party 0 sees every tuple, like TFP

    def install(self, crypten: Any) -> None:  # 2. plug a CrypTen provider in, count its work
        provider = counting_provider(crypten.mpc.provider.TrustedFirstParty, "EXAMPLE", self.counters)
        use_provider(crypten, "EXAMPLE", provider)
        meter_online_tuple_use(crypten, self.counters)

    def uninstall(self, crypten: Any) -> None:
        unmeter_online_tuple_use(crypten)
        drop_provider(crypten, "EXAMPLE")

    def describe(self) -> str:
        return f"{NAME} (the README's example source)"


@pytest.mark.slow
def test_train_with_a_triple_source_defined_in_this_file(job):
    # 3. name it in the config; protocol.plugins makes every party process import this file
    summary = job("num_parties=2", "data.rows=300", "data.test_rows=400", "train.epochs=1",
                  f"protocol.triple_source={NAME}", "protocol.truncation=local", "protocol.comparison=crypten",
                  "protocol.plugins=[test_add_primitive]")
    assert summary["protocol_parts"]["triple_source"] == f"{NAME} (the README's example source)"
    for party in summary["per_party"]:
        counters = party["protocol_parts"]["triple_source"]
        assert counters["calls"] > 0 and counters["tuples"] > 0  # 4. its own counters
        assert counters["online_bytes"] > 0 and counters["online_rounds"] > 0
    assert abs(summary["gaps"]["auc"]["gap"]) <= 0.01


def test_a_source_without_sign_masks_is_refused_with_the_packed_comparison():
    from launch.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"protocol.comparison=packed .* protocol.triple_source={NAME} does not deal; "
                                          "set protocol.comparison=crypten"):
        load_config([f"protocol.triple_source={NAME}", "protocol.truncation=local", "protocol.plugins=[test_add_primitive]"])
