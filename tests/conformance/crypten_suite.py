"""CrypTen's own upstream tests over cotrain: the cells, the test selection and the coordinator.

A cell is one transport x one protocol suite x a number of parties. Its parties (and the
dealer, where the suite has one) are long-lived worker processes (``crypten_worker.py``):
each test runs in all of them at once inside a fresh secure session, as upstream's
``MultiProcessTestCase`` runs it after ``crypten.init()``. The coordinator hands out one
test at a time over a local socket (JSON lines) and collects every rank's outcome. After a
failure the workers' message streams may be out of step, so they are stopped and a fresh
set starts with the next test.

Skips are decided here, each with its reason, or by upstream's own skip decorators.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent / "transport"))
from helpers import free_ports  # noqa: E402  (the transport tests' port picker)
from parties.transport import TransportOptions  # noqa: E402

WORKER = HERE / "crypten_worker.py"
PYTHON = sys.executable
MPIRUN = str(Path(sys.executable).parent / "mpirun")

TRANSPORTS = ("zmq", "gloo", "mpi")
SUITES = {"tfp": (2, 3), "dealer": (2, 3), "ot": (2,)}
# CrypTen's multi-process test files that run here. Not run: test_cuda (CUDA), test_models
# (needs torchvision, not installed), test_baseOT (imports crypten.mpc.primitives.ot, which the
# 0.4.1 wheel does not ship), and the single-process files (test_common, test_context,
# test_benchmark: no communicator)
FILES = ("test_communicator", "test_mpc", "test_nn", "test_arithmetic", "test_binary", "test_autograd",
         "test_gradients", "test_crypten", "test_optim", "test_distributions", "test_onnx_converter",
         "test_privacy_models", "test_debug")

TTP = ("CrypTen's TTP provider (a trusted third party process): cotrain does not offer it; "
       "the cell's suite supplies every tuple")
RSS = "replicated secret sharing (cfg.mpc.protocol=replicated): cotrain does not offer RSS"
PICKLES = ("pickled objects: sends torch.nn.Module objects, which only pickles carry, and raw pickles "
           "through torch.distributed; cotrain never unpickles what a peer sends")
SKIPPED_CLASSES = {"TestTTP": TTP, "TestRSS": RSS}
TORCH_DISTRIBUTED = ("calls torch.distributed directly, not CrypTen's communicator: only the gloo transport "
                     "initializes torch.distributed")
TORCH_DISTRIBUTED_TESTS = ("test_privacy_models.TestPrivacyModels.test_dp_split_mpc",)
DEALER_IN_TORCH_DISTRIBUTED = ("calls torch.distributed directly on its whole world, not CrypTen's communicator: "
                               "in a dealer cell that world holds the dealer too, which serves tuples and never "
                               "joins the test's broadcast")
MODULE_BROADCAST = ("pickled objects: crypten.load_from_party of a torch.nn.Module broadcasts the module "
                    "object (a pickle, under CrypTen's allow-list of classes) to the other parties; cotrain never "
                    "unpickles what a peer sends")
SKIPPED_TESTS = {
    "test_communicator.TestCommunicatorMultiProcess.test_send_recv_obj": PICKLES,
    "test_communicator.TestCommunicatorMultiProcess.test_broadcast_obj": PICKLES,
    "test_crypten.TestCrypten.test_plaintext_save_load_module_from_party": MODULE_BROADCAST,
}
# Upstream tests whose expected values are written for two parties: they fail at three on
# CrypTen's own communicator too (test_gather expects [tensor([0]), tensor([1])]; test_logging
# expects P - 1 copies at every party, where CrypTen's rule counts one at non-roots;
# test_wrap_error_detection expects the two-party local truncation's error, where with three
# CrypTen truncates with wrap tuples, exactly: it failed so in gloo/dealer/3p).
TWO_PARTY = ("two-party test: upstream's expected values assume two parties and fail at three "
             "on CrypTen's own communicator as well")
TWO_PARTY_TESTS = ("test_communicator.TestCommunicatorMultiProcess.test_gather",
                   "test_communicator.TestCommunicatorMultiProcess.test_logging",
                   "test_debug.TestDebug.test_wrap_error_detection")
# Upstream tests that pin the behaviour of one of CrypTen's own protocol parts: they run
# with that part instead of the suite's (test id -> (settings, reason)). test_tuple_cache lists,
# one by one, the binary triples of CrypTen's A2B comparison (one (1, 1, 5) pair, six
# (2, 1, 1, 5)); the packed comparison computes the same sign from other triples (64 bits to a
# word). Its trace, fill and replay through the provider's cache are checked in
# tests/protocols/test_packed_comparison.py.
PINNED_COMPARISON = ("lists the binary triples of CrypTen's own comparison (the A2B adder); the packed "
                     "comparison asks for bit-packed ones: runs with protocol.comparison=crypten")
# test_wrap_error_detection sets both shares of a 0 to 2^63 - 1 (a sharing of -2 ulp whose
# shares wrap) and expects the validation mode to catch CrypTen's local truncation dividing each
# share alone; topbits and pairs divide that sharing exactly, so there is nothing to catch.
LOCAL_TRUNCATION = ("forces the wrap that CrypTen's local two-party truncation gets wrong; topbits and pairs "
                    "divide it exactly (no error to detect): runs with protocol.truncation=local")
ADAPTED_TESTS = {"test_mpc.TestTFP.test_tuple_cache": ({"comparison": "crypten"}, PINNED_COMPARISON),
                 "test_debug.TestDebug.test_wrap_error_detection": ({"truncation": "local"}, LOCAL_TRUNCATION)}
# Upstream classes for one party count; every other class runs at the cell's. test_mpc has
# a class per count (TestTFP is its two-party run, Test3PC its three-party run); upstream's
# other files are two-party only, and run here at three parties too.
PARTY_COUNT = {"test_mpc.TestTFP": 2, "test_mpc.Test3PC": 3}
# after one rank failed, how long the others get to say so before the cell restarts
FAILURE_GRACE_S = 5.0
# How long a party waits for a message: a run's default (transport.timeout_s). With 30 s, a
# dealer dealing 390,000-element tuples on loaded cores answered after the parties had given
# up (test_max_min_pairwise at three parties); a failing rank ends its test at once anyway.
WIRE_TIMEOUT_S = TransportOptions.timeout_s
# A whole test at every rank. Stalls end at the wire timeout and failures at once, so this
# only has to outlast the slowest test on loaded cores (the OT suite's image convolutions in
# test_nn.test_pytorch_modules: 808 s at load 20).
TEST_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Cell:
    transport: str
    suite: str
    parties: int

    @property
    def name(self) -> str:
        return f"{self.transport}/{self.suite}/{self.parties}p"

    @property
    def has_dealer(self) -> bool:
        return self.suite == "dealer"


def all_cells() -> list[Cell]:
    return [Cell(t, s, n) for t in TRANSPORTS for s, counts in SUITES.items() for n in counts]


@dataclass
class Outcome:
    outcome: str  # passed | failed | skipped
    detail: str = ""
    seconds: float = 0.0
    cpu_s: float = 0.0  # CPU seconds, all ranks together (the load on a shared machine inflates seconds)
    peak_rss_mb: float = 0.0  # the largest rank's peak memory so far in its process


@dataclass
class Selection:
    """The tests a cell runs, and the ones it skips (test id -> reason)."""

    run: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    # tests run with some of the suite's settings changed: test id -> (settings, reason)
    adapted: dict[str, tuple[dict, str]] = field(default_factory=dict)


def _upstream_classes(module_name: str) -> list[type]:
    from crypten_worker import load_crypten_tests

    load_crypten_tests()
    import importlib

    module = importlib.import_module(f"test.{module_name}")
    from test.multiprocess_test_case import MultiProcessTestCase

    return [value for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, MultiProcessTestCase)
            and value is not MultiProcessTestCase and value.__module__ == module.__name__]


def _torch_distributed_skip(cell: Cell) -> str:
    """Why a test that calls torch.distributed itself cannot run in this cell ("" if it can)."""
    if cell.transport != "gloo":
        return TORCH_DISTRIBUTED
    return DEALER_IN_TORCH_DISTRIBUTED if cell.has_dealer else ""


def select(cell: Cell, files: Iterable[str] = FILES, match: str = "") -> Selection:
    """Every upstream test of ``files`` this cell runs or skips (``match``: comma-separated
    substrings, one of which a test id must contain)."""
    patterns = [pattern for pattern in match.split(",") if pattern]
    selection = Selection()
    for module_name in files:
        for cls in _upstream_classes(module_name):
            if PARTY_COUNT.get(f"{module_name}.{cls.__name__}", cell.parties) != cell.parties:
                continue  # a class for another party count runs in those cells
            for method in unittest.TestLoader().getTestCaseNames(cls):
                test_id = f"{module_name}.{cls.__name__}.{method}"
                if patterns and not any(pattern in test_id for pattern in patterns):
                    continue
                reason = SKIPPED_CLASSES.get(cls.__name__) or SKIPPED_TESTS.get(test_id) or (
                    TWO_PARTY if cell.parties != 2 and test_id in TWO_PARTY_TESTS else "") or (
                    _torch_distributed_skip(cell) if test_id in TORCH_DISTRIBUTED_TESTS else "")
                if reason:
                    selection.skipped[test_id] = reason
                    continue
                selection.run.append(test_id)
                settings, why = ADAPTED_TESTS.get(test_id, ({}, ""))
                if any(protocol_settings(cell.suite).get(key) != value for key, value in settings.items()):
                    selection.adapted[test_id] = (settings, why)
    return selection


class CellRun:
    """The worker processes of one cell, and the tests they run one by one."""

    def __init__(self, cell: Cell, log_path: Path, test_timeout_s: float = TEST_TIMEOUT_S,
                 wire_timeout_s: float = WIRE_TIMEOUT_S) -> None:
        self.cell = cell
        self.log_path = log_path
        self.test_timeout_s = test_timeout_s
        self.wire_timeout_s = wire_timeout_s
        self.processes: list[subprocess.Popen] = []
        self.connections: dict[int, socket.socket] = {}
        self.pending: dict[socket.socket, bytes] = {}  # bytes read past the last full line
        self.starts = 0  # sets of workers started (one, plus one after each failure)
        self._keys = tempfile.TemporaryDirectory(prefix="cotrain-conformance-keys-")

    @property
    def world(self) -> int:
        return self.cell.parties + (1 if self.cell.has_dealer else 0)

    def _names(self) -> list[str]:
        return [f"party{i}" for i in range(self.cell.parties)] + (["dealer"] if self.cell.has_dealer else [])

    def _spec(self, listener_port: int) -> dict:
        names = self._names()
        key_dir = ""
        if self.cell.transport == "zmq":
            from parties.transport.keys import generate_party_keys

            key_dir = tempfile.mkdtemp(dir=self._keys.name)
            generate_party_keys(key_dir, names)
        ports = free_ports(len(names) + 1)
        return {"transport": self.cell.transport, "parties": self.cell.parties, "names": names,
                "protocol": protocol_settings(self.cell.suite), "timeout_s": self.wire_timeout_s,
                "master_port": ports[-1], "peers": {n: f"tcp://127.0.0.1:{p}" for n, p in zip(names, ports)},
                "key_dir": key_dir, "coordinator_port": listener_port}

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(180)
        spec = self._spec(listener.getsockname()[1])
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "a")
        if self.cell.transport == "mpi":
            commands = [[MPIRUN, "-n", str(self.world), PYTHON, str(WORKER), json.dumps(spec)]]
        else:
            commands = [[PYTHON, str(WORKER), json.dumps({**spec, "rank": rank})] for rank in range(self.world)]
        self.processes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True) for command in commands]
        log.close()
        try:
            while len(self.connections) < self.world:
                connection, _ = listener.accept()
                self.pending[connection] = b""
                rank = json.loads(self._line(connection, time.monotonic() + 180))["rank"]
                self.connections[rank] = connection
        finally:
            listener.close()
        self.starts += 1

    def _line(self, connection: socket.socket, deadline: float) -> str:
        """The next line from a worker ("" if none came by ``deadline`` or it hung up)."""
        while b"\n" not in self.pending[connection]:
            connection.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = connection.recv(1 << 16)
            except (TimeoutError, OSError):
                return ""
            if not chunk:
                return ""
            self.pending[connection] += chunk
        line, _, self.pending[connection] = self.pending[connection].partition(b"\n")
        return line.decode()

    def stop(self, kill: bool = False) -> None:
        """End the workers: asked to stop, or (``kill``, after a failure, when some may be
        stuck waiting for a peer) at once."""
        if not kill:
            for connection in self.connections.values():
                try:
                    connection.sendall(b'{"stop": true}\n')
                except OSError:
                    pass
        deadline = time.monotonic() + (0 if kill else 20)
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # our own session: the workers (and mpirun's)
                process.wait()
        for connection in self.connections.values():
            connection.close()
        self.processes, self.connections, self.pending = [], {}, {}

    def run_one(self, test_id: str, settings: dict | None = None) -> Outcome:
        """One test at every rank (``settings``: protocol settings to change for it). Once a
        rank has failed, the others get ``FAILURE_GRACE_S`` to report (a peer of a failed rank
        would otherwise sit out its wire timeout)."""
        start = time.monotonic()
        message = (json.dumps({"run": test_id, "protocol": settings or {}}) + "\n").encode()
        for connection in self.connections.values():
            connection.sendall(message)
        replies: dict[int, dict] = {}
        deadline = start + self.test_timeout_s
        waiting = {connection: rank for rank, connection in self.connections.items()}
        with selectors.DefaultSelector() as selector:
            for connection in waiting:
                selector.register(connection, selectors.EVENT_READ)
            while waiting and time.monotonic() < deadline:
                for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                    connection = key.fileobj
                    line = self._line(connection, time.monotonic() + 10)
                    selector.unregister(connection)
                    rank = waiting.pop(connection)
                    if line:
                        replies[rank] = json.loads(line)
                        if replies[rank]["outcome"] == "failed":
                            deadline = min(deadline, time.monotonic() + FAILURE_GRACE_S)
        seconds = time.monotonic() - start
        cpu = sum(reply.get("cpu_s", 0.0) for reply in replies.values())
        rss = max((reply.get("peak_rss_mb", 0.0) for reply in replies.values()), default=0.0)
        parties = [replies.get(rank) for rank in range(self.cell.parties)]
        failures = [f"rank {rank}: {reply['detail']}" for rank, reply in sorted(replies.items())
                    if reply["outcome"] == "failed"]
        missing = [rank for rank in range(self.world) if rank not in replies]
        if missing:
            failures.append(f"ranks {missing} gave no outcome within {min(seconds, self.test_timeout_s):.0f} s"
                            + (" (stopped after another rank failed)" if failures else ""))
        if failures:
            return Outcome("failed", "\n".join(failures), seconds, cpu, rss)
        skips = [reply["detail"] for reply in parties if reply["outcome"] == "skipped"]
        if skips:
            return Outcome("skipped", skips[0], seconds, cpu, rss)
        return Outcome("passed", "", seconds, cpu, rss)

    def run(self, tests: list[str], on_result: Callable[[str, Outcome], None] | None = None,
            settings: dict[str, dict] | None = None) -> dict[str, Outcome]:
        """Each test in turn (``settings``: per test, protocol settings to change for it);
        ``on_result`` hears every outcome as it comes (a run stopped part-way still leaves a
        record of the tests it finished)."""
        results: dict[str, Outcome] = {}
        for test_id in tests:
            if not self.processes:
                try:
                    self.start()
                except (OSError, ValueError, KeyError) as error:
                    self.stop(kill=True)
                    results[test_id] = Outcome("failed", f"the cell's processes did not start: {error}")
                    continue
            results[test_id] = self.run_one(test_id, (settings or {}).get(test_id))
            if on_result:
                on_result(test_id, results[test_id])
            if results[test_id].outcome == "failed":
                self.stop(kill=True)  # message streams may be out of step: start afresh
        self.stop()
        return results


def protocol_settings(suite: str) -> dict:
    """The suite as ``protocol=<suite>`` runs it: its parts from ``conf/protocol/<suite>.yaml``
    (the dataclass defaults alone would, e.g., pair the OT source with the packed comparison,
    whose sign masks it does not deal)."""
    import yaml

    return yaml.safe_load((REPO / "conf" / "protocol" / f"{suite}.yaml").read_text())


@dataclass
class CellResult:
    results: dict[str, Outcome]  # per test run
    skipped: dict[str, str]  # per test skipped here: the reason
    starts: int  # sets of workers started: one, plus one after each failure
    adapted: dict[str, str] = field(default_factory=dict)  # per test run with changed settings: why


def run_cell(cell: Cell, log_dir: Path, files: Iterable[str] = FILES, match: str = "",
             test_timeout_s: float = TEST_TIMEOUT_S, on_result: Callable[[str, Outcome], None] | None = None,
             ) -> CellResult:
    """Run a cell's selection."""
    selection = select(cell, files, match)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{cell.name.replace('/', '-')}.log"
    run = CellRun(cell, log_path, test_timeout_s)
    results = run.run(selection.run, on_result, {test_id: settings for test_id, (settings, _) in selection.adapted.items()})
    return CellResult(results, selection.skipped, run.starts,
                      {test_id: why for test_id, (_, why) in selection.adapted.items()})
