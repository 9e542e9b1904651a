"""CrypTen's own upstream tests over cotrain: a selection of cells for ``make test``.

The full matrix (every transport x suite x party count, every runnable upstream file) is
``make conformance`` (tests/conformance/matrix.py). Here, one cell per transport covers the
communicator surface, the dealer's party group, a three-party world, the OT suite, a
crypten.nn test that broadcasts into parameters (it failed with the dealer before),
crypten's own BatchNormalization (its training tuple), which a converter change once replaced,
and the provider's tuple cache, run with CrypTen's comparison where the suite's is packed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crypten_suite import SUITES, Cell, protocol_settings, run_cell, select
from protocols import ProtocolConfig
from protocols.suite import check_parts_fit

SELECTION = [
    (Cell("zmq", "dealer", 3), ["test_communicator", "test_nn"], "TestCommunicator,test_nn.TestTFP.test_linear"),
    (Cell("gloo", "tfp", 2), ["test_communicator", "test_nn", "test_mpc"],
     "TestCommunicator,test_nn.TestTFP.test_batchnorm_module,test_mpc.TestTFP.test_tuple_cache"),
    # test_tuple_cache over a keyed provider too (ot's, as the dealer's): its matrix products'
    # late c must still go through CrypTen's tracing and tuple cache
    (Cell("mpi", "ot", 2), ["test_communicator", "test_mpc"], "TestCommunicator,test_mpc.TestTFP.test_tuple_cache"),
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
    # a test run with a suite setting changed is one that ran, and says why
    assert set(record.adapted) <= set(results) and all(record.adapted.values())


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_each_cell_runs_its_suite_as_configured(suite: str) -> None:
    """A cell's parties get every part of conf/protocol/<suite>.yaml, not the dataclass defaults."""
    settings = protocol_settings(suite)
    assert settings["name"] == suite  # the ot suite's source is ot_he (Gilboa, BFV for large products)
    assert settings["triple_source"] == {"ot": "ot_he"}.get(suite, suite)
    config = ProtocolConfig(**settings)
    check_parts_fit(config)  # raises where a part needs tuples the source does not deal
    assert (config.comparison, config.truncation) == (settings["comparison"], settings["truncation"])


@pytest.mark.parametrize("suite, adapted", [("tfp", True), ("dealer", True), ("ot", True)])
def test_a_test_pinned_to_cryptens_comparison_runs_with_it(suite: str, adapted: bool) -> None:
    """test_tuple_cache lists the A2B adder's triples: it runs with comparison=crypten in the
    cells whose suite compares with the packed one, and unchanged in the others."""
    selection = select(Cell("zmq", suite, 2), ["test_mpc"], "test_tuple_cache")
    assert selection.run == ["test_mpc.TestTFP.test_tuple_cache"]
    assert selection.adapted.get("test_mpc.TestTFP.test_tuple_cache", ({}, ""))[0] == (
        {"comparison": "crypten"} if adapted else {})


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_the_forced_wrap_runs_with_cryptens_local_truncation(suite: str) -> None:
    """test_wrap_error_detection expects CrypTen's local truncation to get a wrapped sharing
    wrong; no suite truncates locally, so every two-party cell runs it with truncation=local."""
    test_id = "test_debug.TestDebug.test_wrap_error_detection"
    selection = select(Cell("zmq", suite, 2), ["test_debug"], "test_wrap_error_detection")
    assert selection.run == [test_id]
    assert selection.adapted[test_id][0] == {"truncation": "local"}
    # with three parties CrypTen's truncation uses wrap tuples, exact: nothing to detect
    assert test_id in select(Cell("zmq", "dealer", 3), ["test_debug"]).skipped


def test_what_a_test_sets_in_cryptens_config_ends_with_it() -> None:
    """Upstream runs each test in fresh processes, the cell's workers run one after another:
    test_debug's setUp turns on the validation mode, which broke the next test."""
    from crypten_worker import config_of_one_test
    from protocols.crypten_hooks import load_crypten

    cfg = load_crypten().config.cfg
    provider = cfg.mpc.provider
    with config_of_one_test():
        cfg.debug.validation_mode = True  # as upstream's test_debug sets it
        cfg.mpc.provider = "TTP"
        assert cfg.debug.validation_mode
    assert not cfg.debug.validation_mode and cfg.mpc.provider == provider


@pytest.mark.parametrize("transport, suite, runs", [("gloo", "tfp", True), ("gloo", "ot", True),
                                                    ("gloo", "dealer", False), ("zmq", "tfp", False)])
def test_a_test_on_torch_distributed_runs_where_its_world_is_the_parties(transport: str, suite: str,
                                                                          runs: bool) -> None:
    """test_dp_split_mpc broadcasts with torch.distributed itself: only gloo starts it, and in
    a dealer cell its world holds the dealer, which never joins (the test timed out there)."""
    test_id = "test_privacy_models.TestPrivacyModels.test_dp_split_mpc"
    selection = select(Cell(transport, suite, 3 if suite == "dealer" else 2), ["test_privacy_models"])
    assert (test_id in selection.run) == runs and (test_id in selection.skipped) != runs
