"""``protocol.plugins``: a part defined outside the project is found by every suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from launch.config import load_config
from protocol_sessions import party_values, run_parties
from protocols import ProtocolConfig, ProtocolSuite

PLUGIN = ["protocol.plugins=[plugin_comparison]", "protocol.comparison=plugin_sign"]
SUITES = sorted(path.stem for path in (Path(__file__).resolve().parents[2] / "conf" / "protocol").glob("*.yaml"))


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_takes_a_plugins_part(suite):
    config = load_config([f"protocol={suite}", "num_parties=2", *PLUGIN])
    comparison = ProtocolSuite(config.protocol).parts["comparison"]
    assert comparison.describe() == "plugin_sign (a plugin from tests/protocols)"


def _compare(crypten, rank):
    import plugin_comparison

    values = torch.tensor([-3.5, -0.25, 0.0, 0.25, 7.0])
    signs = (crypten.cryptensor(values) < 0).get_plain_text()
    return {"signs": signs.tolist(), "plugin_calls": list(plugin_comparison.CALLS)}


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["tfp", "dealer"])
def test_the_plugins_part_runs_in_every_party(suite):
    protocol = ProtocolConfig(name=suite, triple_source=suite, plugins=["plugin_comparison"], comparison="plugin_sign")
    for result in party_values(run_parties(_compare, protocol, parties=2), 2):
        assert result["signs"] == [1.0, 1.0, 0.0, 0.0, 0.0]
        assert result["plugin_calls"] == [5]  # the plugin compared, once, all five elements
