"""One party of one benchmarked system: ``python -m bench.party SPEC.json [RANK]``.

The rank comes from the argument, or from MPI's environment under ``mpirun``. The party
sets up its system (plain CrypTen over its own communicator, or this project's transport +
session + suite), runs the workloads named in the spec and writes ``rank<r>.json`` next to
the spec: per workload and repeat, wall seconds, CPU seconds, bytes sent, rounds and minor page faults.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

MPI_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")
PROFILER: Any = None  # cProfile of this party's timed runs, when the spec asks for one
CHECKPOINT: Any = None  # writes the results so far


def _rank(argv: list[str]) -> int:
    if len(argv) > 2:
        return int(argv[2])
    for variable in MPI_RANK_VARIABLES:
        if variable in os.environ:
            return int(os.environ[variable])
    raise SystemExit("bench.party: no rank given and none in the MPI environment")


class Gate:
    """Turns handed out by the coordinator, so that systems launched together take turns.

    Rank 0 waits for ``go-<k>`` in the control folder before its k-th phase and writes
    ``done-<k>`` after it; the other ranks follow rank 0 through the phase's first collective.
    Without a control folder every phase starts at once.
    """

    def __init__(self, folder: str | None, rank: int) -> None:
        self.folder = Path(folder) if folder and rank == 0 else None
        self.count = 0
        announce_ready(folder, rank)

    def enter(self) -> None:
        if self.folder is None:
            return
        self.count += 1
        go = self.folder / f"go-{self.count}"
        while not go.exists():
            time.sleep(0.02)

    def leave(self, what: str) -> None:
        if self.folder is not None:
            (self.folder / f"done-{self.count}.tmp").write_text(what)
            (self.folder / f"done-{self.count}.tmp").rename(self.folder / f"done-{self.count}")


def announce_ready(folder: str | None, rank: int) -> None:
    """Tell the coordinator this process has started (imports, memory, transport): no system's
    timed phase runs while another's processes are still starting on the same cores."""
    if folder:
        (Path(folder) / f"ready-{rank}").write_text("")


def run_workloads(spec: dict, crypten: Any, ops: Any, meter: Any, barrier: Any, rank: int = 0,
                  rounds_by_kind: dict[str, int] | None = None, rounds: Any = None) -> dict:
    """Each workload's setup, then its repeats, each sample with its wall and CPU seconds, bytes
    sent and rounds (and, given ``rounds_by_kind``'s live counts, the repeat's rounds by kind;
    given a ``bench.round_profile.RoundProfiler``, the repeat's rounds one by one)."""
    from bench.workloads import WORKLOADS, secure_setup

    device = spec.get("device")
    gate = Gate(spec.get("control"), rank)
    results: dict[str, Any] = {}
    for name in spec["workloads"]:
        repeats = spec.get("repeats", {}).get(name, WORKLOADS[name][2])
        try:
            gate.enter()
            try:
                run, score = secure_setup(name, crypten, ops, device, spec.get("sizes", {}).get(name))
                barrier()
            finally:
                gate.leave(f"{name} setup")
            samples = []
            for repeat in range(repeats):
                gate.enter()
                barrier()
                sent0, rounds0 = meter()
                kinds0 = dict(rounds_by_kind or {})
                if rounds is not None:
                    rounds.take()
                faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # fresh pages touched
                cpu0, start = time.process_time(), time.perf_counter()
                if PROFILER is not None:
                    PROFILER.runcall(run)
                else:
                    run()
                if device and "cuda" in str(device):
                    torch.cuda.synchronize()
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
                sent1, rounds1 = meter()
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
                samples.append({"wall": wall, "cpu": cpu, "bytes": sent1 - sent0, "rounds": rounds1 - rounds0,
                                "faults": faults})
                if rounds is not None:
                    samples[-1]["round_profile"] = rounds.take()
                if rounds_by_kind is not None:
                    samples[-1]["rounds_by_kind"] = {kind: count - kinds0[kind] for kind, count in rounds_by_kind.items()}
                if repeat == 0 and score is not None:  # held-out AUC after one epoch, untimed
                    auc = score()
                barrier()
                gate.leave(f"{name} repeat {repeat + 1}")
            entry: dict[str, Any] = {"samples": samples}
            if score is not None:
                entry["auc"] = auc
            results[name] = entry
            if CHECKPOINT is not None:  # a system stopped later still reports what it finished
                CHECKPOINT(results)
        except Exception as error:  # one workload failing must not hide the others
            gate.leave(f"{name} failed")
            reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
            results[name] = {"error": f"{error.__class__.__name__}: {reason}"[:160],
                             "trace": traceback.format_exc()[-2000:]}
            barrier_ok = False
            try:
                barrier()
                barrier_ok = True
            except Exception:
                pass
            if not barrier_ok:
                break
    return results


def run_crypten(spec: dict, rank: int) -> dict:
    """Plain CrypTen 0.4.1 as users run it: crypten.init() over RENDEZVOUS env vars, TFP."""
    os.environ.update(RENDEZVOUS=f"tcp://127.0.0.1:{spec['port']}", WORLD_SIZE=str(spec["parties"]),
                      RANK=str(rank), DISTRIBUTED_BACKEND="gloo")
    from protocols.crypten_hooks import load_crypten

    crypten = load_crypten()
    crypten.cfg.communicator.verbose = True  # CrypTen counts bytes and rounds only when verbose
    device = spec.get("device")
    crypten.init(device=device if device and "cuda" in device else None)
    from bench.workloads import crypten_ops

    comm = crypten.communicator.get()

    def meter() -> tuple[int, int]:
        stats = comm.get_communication_stats()
        return int(stats["bytes"]), int(stats["rounds"])

    def barrier() -> None:
        verbose = crypten.cfg.communicator.verbose
        crypten.cfg.communicator.verbose = False
        try:
            comm.barrier()
        finally:
            crypten.cfg.communicator.verbose = verbose

    try:
        return run_workloads(spec, crypten, crypten_ops(), meter, barrier, rank)
    finally:
        crypten.uninit()


def run_cotrain(spec: dict, rank: int) -> dict:
    """This project: our transport, MpcSession and the named protocol suite."""
    from parties.transport.group import PartyGroup
    from mpc.session import MpcSession
    from parties.transport import PartyAddress, TransportOptions, open_transport
    from protocols import ProtocolConfig, ProtocolSuite
    from parties.dealer import DEALER_NAME
    from parties.dealer import serve_tuples
    from protocols.registry import part_class
    from protocols.suite import check_party_count, needs_dealer

    from parties.memory import keep_freed_memory

    keep_freed_memory()  # as a party process of a cotrain run (parties.entry)
    protocol = ProtocolConfig(**spec["protocol"])
    parties = spec["parties"]
    check_party_count(protocol, parties)
    dealer = needs_dealer(protocol)
    names = tuple(f"p{i}" for i in range(parties)) + ((DEALER_NAME,) if dealer else ())
    options = TransportOptions(name=spec["transport"], master_port=spec["port"], timeout_s=1800,
                               **spec.get("transport_options", {}))
    transport = open_transport(PartyAddress(rank, len(names), names), options)
    try:
        if rank == parties:
            announce_ready(spec.get("control"), rank)
            serve_tuples(transport, parties, part_class("triple_source", protocol.triple_source).make_dealer(parties))
            return {}
        comm = PartyGroup(transport, parties) if dealer else transport
        from bench.sequence_step import count_rounds_by_kind
        from bench.workloads import cotrain_ops

        from bench.round_profile import RoundProfiler

        kinds = count_rounds_by_kind(transport.stats) if spec.get("rounds_by_kind") else None
        profiler = RoundProfiler(transport) if spec.get("round_profile") else None

        def meter() -> tuple[int, int]:
            return transport.stats.bytes_sent, transport.stats.rounds

        def barrier() -> None:
            comm.barrier()
            transport.stats.rounds -= 1  # the benchmark's own barriers are not the workload's

        with MpcSession(comm, ProtocolSuite(protocol), device=spec.get("device") or "cpu") as crypten:
            return run_workloads(spec, crypten, cotrain_ops(), meter, barrier, rank, kinds, profiler)
    finally:
        transport.close()


def main(argv: list[str]) -> int:
    spec_path = Path(argv[1])
    spec = json.loads(spec_path.read_text())
    rank = _rank(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.process_time()
    global CHECKPOINT

    def checkpoint(results: dict) -> None:
        partial = spec_path.parent / f"rank{rank}.json.tmp"
        partial.write_text(json.dumps({"rank": rank, "results": results, "partial": True}))
        partial.rename(spec_path.parent / f"rank{rank}.json")

    CHECKPOINT = checkpoint
    try:
        global PROFILER
        if spec.get("profile"):  # the timed runs only, every party (not the dealer)
            import cProfile

            # CPU seconds (all the process's threads): on a shared machine a wall-clock
            # profile mostly measures the scheduler; waits show in bench.round_profile
            PROFILER = cProfile.Profile(time.process_time)
        results = (run_crypten if spec["system"] == "crypten" else run_cotrain)(spec, rank)
        if PROFILER is not None and results:
            PROFILER.dump_stats(str(spec_path.parent / f"rank{rank}.prof"))
        out = {"rank": rank, "results": results, "process_cpu": time.process_time() - started}
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        out = {"rank": rank, "error": f"{error.__class__.__name__}: {reason}"[:200],
               "trace": traceback.format_exc()[-3000:]}
    (spec_path.parent / f"rank{rank}.json").write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
