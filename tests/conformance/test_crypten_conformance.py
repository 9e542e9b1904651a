"""CrypTen's own upstream tests over cotrain: a selection of cells for ``make test``.

The full matrix (every transport x suite x party count, every runnable upstream file) is
``make conformance`` (tests/conformance/matrix.py). Here, one cell per transport covers the
communicator surface, the dealer's party group, a three-party world, the OT suite, a
crypten.nn test that broadcasts into parameters (it failed with the dealer before), and
crypten's own BatchNormalization (its training tuple), which a converter change once replaced.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crypten_suite import SUITES, Cell, protocol_settings, run_cell
from protocols import ProtocolConfig
from protocols.suite import check_parts_fit

SELECTION = [
    (Cell("zmq", "dealer", 3), ["test_communicator", "test_nn"], "TestCommunicator,test_nn.TestTFP.test_linear"),
    (Cell("gloo", "tfp", 2), ["test_communicator", "test_nn"], "TestCommunicator,test_nn.TestTFP.test_batchnorm_module"),
    (Cell("mpi", "ot", 2), ["test_communicator"], ""),
]


@pytest.mark.slow
@pytest.mark.parametrize("cell, files, match", SELECTION, ids=[cell.name for cell, _, _ in SELECTION])
def test_crypten_upstream_tests_pass(tmp_path: Path, cell: Cell, files: list[str], match: str) -> None:
    record = run_cell(cell, tmp_path, files, match)
    results, skipped = record.results, record.skipped
    failed = {test_id: result.detail for test_id, result in results.items() if result.outcome == "failed"}
    assert not failed, "\n\n".join(f"{test_id}:\n{detail}" for test_id, detail in failed.items())
    assert sum(result.outcome == "passed" for result in results.values()) >= 14
    # every skip says why: one of ours (pickles) or upstream's own decorator
    assert all(reason for reason in skipped.values())
    assert all(result.detail for result in results.values() if result.outcome == "skipped")


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_each_cell_runs_its_suite_as_configured(suite: str) -> None:
    """A cell's parties get every part of conf/protocol/<suite>.yaml (the OT cells once ran the
    packed comparison, the dataclass default, which the OT source cannot serve)."""
    settings = protocol_settings(suite)
    assert settings["name"] == settings["triple_source"] == suite
    config = ProtocolConfig(**settings)
    check_parts_fit(config)  # raises where a part needs tuples the source does not deal
    if suite == "ot":
        assert config.comparison == "crypten"
