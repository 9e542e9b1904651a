"""One process of a conformance cell: a party (or the dealer) that runs CrypTen's own tests.

Started by ``crypten_suite.CellRun`` (spawned, or under ``mpirun`` for the MPI transport)
with the cell as JSON on the command line. It opens a cotrain transport once, then takes
commands from the coordinator as JSON lines over a local socket: for each test it opens a
fresh ``MpcSession`` (where upstream calls ``crypten.init()``), runs the test method of
CrypTen's installed ``test`` package at this rank, and answers with the outcome. The dealer
serves one session per test. Nothing here is pickled.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import importlib.util
import json
import os
import resource
import socket
import sys
import time
import traceback
import types
import unittest
import warnings
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def load_crypten_tests() -> Any:
    """CrypTen's upstream test package (the wheel installs it as top-level ``test``, which the
    standard library's regression-test package would otherwise shadow)."""
    from protocols.crypten_hooks import load_crypten

    crypten = load_crypten()
    package = Path(crypten.__file__).resolve().parent.parent / "test"
    spec = importlib.util.spec_from_file_location("test", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["test"] = module
    spec.loader.exec_module(module)
    return module


def _rank(cell: dict) -> int:
    for variable in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if variable in os.environ:
            return int(os.environ[variable])
    return int(cell["rank"])


def _transport(cell: dict, rank: int) -> Any:
    from parties.transport import PartyAddress, TransportOptions, open_transport

    names = tuple(cell["names"])
    options = TransportOptions(name=cell["transport"], timeout_s=cell["timeout_s"], connect_timeout_s=60,
                               master_port=cell["master_port"], peers=cell["peers"],
                               key_dir=cell["key_dir"], encrypt=bool(cell["key_dir"]))
    return open_transport(PartyAddress(rank, len(names), names), options)


def _patch_upstream_harness(world_size: int) -> None:
    """Make CrypTen's MultiProcessTestCase a test already inside its party process.

    Upstream, setUp spawns the parties (in the main process) or records the world size a
    class asks for; here the process is a party of a cell whose size is fixed, and there
    are no children to terminate on tearDown.
    """
    import crypten.communicator
    import crypten.debug
    import test.multiprocess_test_case as upstream_harness
    from test.multiprocess_test_case import MultiProcessTestCase

    cell_size = world_size

    def setUp(self: Any, world_size: int = 0) -> None:  # upstream's keyword; the cell's size wins
        unittest.TestCase.setUp(self)
        crypten.debug.configure_logging()
        self.world_size = cell_size
        self.default_tolerance = 0.5

    MultiProcessTestCase.setUp = setUp
    MultiProcessTestCase.tearDown = unittest.TestCase.tearDown
    # get_random_linear syncs a layer's weights from party 0 "if torch.distributed is
    # initialized", upstream's way of asking whether the parties are connected; over zmq and
    # MPI torch.distributed is never initialized, so ask CrypTen's communicator instead
    upstream_harness.dist = types.SimpleNamespace(is_initialized=crypten.communicator.is_initialized)


_classes: dict[str, type] = {}


def _case_class(module_name: str, class_name: str) -> type:
    """Upstream's class, keeping the provider and protocol the cotrain suite installed
    (upstream's setUp selects CrypTen's own TFP provider)."""
    key = f"{module_name}.{class_name}"
    if key not in _classes:
        from crypten.config import cfg

        upstream = getattr(importlib.import_module(f"test.{module_name}"), class_name)

        def setUp(self: Any) -> None:
            provider, protocol = cfg.mpc.provider, cfg.mpc.protocol
            upstream.setUp(self)
            cfg.mpc.provider, cfg.mpc.protocol = provider, protocol

        _classes[key] = type(class_name, (upstream,), {"setUp": setUp, "__module__": upstream.__module__})
    return _classes[key]


def _outcome(result: unittest.TestResult) -> dict:
    if result.errors or result.failures:
        detail = "\n".join(text for _, text in result.errors + result.failures)
        return {"outcome": "failed", "detail": detail}
    if result.skipped:
        return {"outcome": "skipped", "detail": result.skipped[0][1]}
    return {"outcome": "passed", "detail": ""}


@contextlib.contextmanager
def config_of_one_test() -> Iterator[None]:
    """CrypTen's settings as they were before the test, once it ends. Upstream runs each test
    in fresh processes; here the workers live on, and test_debug's setUp turns on
    cfg.debug.validation_mode, which broke the next test (test_gradients test_dropout: its
    validation wrapper met crypten's autograd)."""
    from crypten.config import cfg

    saved = copy.deepcopy(cfg.config)
    try:
        yield
    finally:
        cfg.set_config(saved)


def run_test(test_id: str, comm: Any, suite_config: Any, rank: int, world_size: int) -> dict:
    """``module.Class.method`` of CrypTen's tests at this rank, inside a fresh secure session."""
    from mpc.session import MpcSession
    from protocols import ProtocolSuite

    module_name, class_name, method = test_id.split(".")
    case = _case_class(module_name, class_name)(method)
    case.rank, case.world_size = rank, world_size
    result = unittest.TestResult()
    with warnings.catch_warnings(), config_of_one_test():
        warnings.simplefilter("ignore")
        with MpcSession(comm, ProtocolSuite(suite_config)):
            case.run(result)
    return _outcome(result)


def main() -> None:
    cell = json.loads(sys.argv[1])
    rank = _rank(cell)
    parties = cell["parties"]
    coordinator = socket.create_connection(("127.0.0.1", cell["coordinator_port"]), timeout=120)
    coordinator.settimeout(None)
    lines = coordinator.makefile("r", encoding="utf-8")

    def answer(message: dict) -> None:
        coordinator.sendall((json.dumps(message) + "\n").encode())

    answer({"rank": rank})
    load_crypten_tests()
    from protocols import ProtocolConfig

    suite_config = ProtocolConfig(**cell["protocol"])
    _patch_upstream_harness(parties)
    transport = _transport(cell, rank)
    dealer = len(cell["names"]) > parties
    comm = transport
    if dealer and rank < parties:
        from parties.transport.group import PartyGroup

        comm = PartyGroup(transport, parties)
    try:
        for line in lines:
            command = json.loads(line)
            if "run" not in command:
                break
            cpu_start = time.process_time()
            try:
                if rank == parties:
                    from parties.dealer import serve_tuples
                    from protocols.registry import part_class

                    serve_tuples(transport, parties,
                                 part_class("triple_source", suite_config.triple_source).make_dealer(parties))
                    reply = {"outcome": "passed", "detail": ""}
                else:
                    reply = run_test(command["run"], comm, dataclasses.replace(suite_config, **command["protocol"]),
                                     rank, parties)
            except BaseException:
                reply = {"outcome": "failed", "detail": traceback.format_exc()}
            answer({"rank": rank, "test": command["run"], "cpu_s": time.process_time() - cpu_start,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **reply})
    finally:
        transport.close()


if __name__ == "__main__":
    main()
