"""Private set intersection: ids per second per party, against a plain hash join of the same ids.

    .venv/bin/python bench/psi_bench.py [--parties 3] [--ids 20000] [--overlap 0.6]
    .venv/bin/python bench/psi_bench.py --check-wire [--ids 100000]

Each party runs in its own process over the default transport (ZeroMQ with CurveZMQ, fresh
keys); a party's rate is its ids over the slowest party's wall time for the whole protocol
(hashing, every blinding, the ring, the comparison), and over the most CPU time any party
spent (the figure to compare on a busy machine, where wall time mostly measures waiting).
The hash join is what a single trusted process would do with every party's ids in the clear:
pandas' inner merge on id.

``--check-wire`` instead runs 3 parties over transports that record every frame they send
and checks the intersection is exact and that no id, raw or in decimal, and no unblinded
hash of a non-shared id is in any frame (``tests/psi/psi_parties.py``; the test suite runs
the same check on 3 x 100,000 ids, this one on as many as asked).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import free_port  # noqa: E402
from mpc.psi.protocol import intersect  # noqa: E402
from parties.transport import PartyAddress, TransportOptions, open_transport  # noqa: E402
from parties.transport.keys import generate_party_keys  # noqa: E402


def party_ids(parties: int, per_party: int, overlap: float, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    common = int(per_party * overlap)
    universe = rng.choice(2**62, size=common + parties * (per_party - common), replace=False)
    own = universe[common:].reshape(parties, per_party - common)
    return [rng.permutation(np.concatenate([universe[:common], own[rank]])) for rank in range(parties)]


def _party(rank: int, names: tuple[str, ...], options: TransportOptions, ids: np.ndarray, results: Any) -> None:
    transport = open_transport(PartyAddress(rank, len(names), names), options)
    try:
        transport.barrier()  # connected everywhere before the clock starts
        start, cpu = time.perf_counter(), time.process_time()
        found = intersect(transport, ids, names[rank], "benchmark")
        results.put((rank, time.perf_counter() - start, found.size, transport.stats.bytes_sent,
                     time.process_time() - cpu))
    finally:
        transport.close()


def run_psi(ids: list[np.ndarray], timeout_s: float) -> dict:
    names = tuple(f"bank{rank}" for rank in range(len(ids)))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory() as keys:
        generate_party_keys(keys, names)
        peers = {name: f"tcp://127.0.0.1:{free_port()}" for name in names}
        options = TransportOptions(name="zmq", peers=peers, key_dir=keys, timeout_s=timeout_s,
                                   connect_timeout_s=timeout_s)
        processes = [context.Process(target=_party, args=(rank, names, options, ids[rank], results))
                     for rank in range(len(ids))]
        for process in processes:
            process.start()
        try:
            reports = sorted(results.get(timeout=timeout_s) for _ in processes)
        finally:
            for process in processes:
                process.join(10)
                if process.is_alive():
                    process.kill()
    seconds = max(report[1] for report in reports)
    return {"seconds": seconds, "cpu_seconds": max(report[4] for report in reports), "intersection": reports[0][2],
            "mb_sent_per_party": max(r[3] for r in reports) / 1e6}


def hash_join(ids: list[np.ndarray], repeat: int = 3) -> dict:
    frames = [pd.DataFrame({"id": party, f"row{rank}": np.arange(len(party))}) for rank, party in enumerate(ids)]
    best, best_cpu, joined = float("inf"), float("inf"), None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        joined = frames[0]
        for frame in frames[1:]:
            joined = joined.merge(frame, on="id", how="inner")
        best, best_cpu = min(best, time.perf_counter() - start), min(best_cpu, time.process_time() - cpu)
    return {"seconds": best, "cpu_seconds": best_cpu, "intersection": len(joined)}


def measure(parties: int = 3, per_party: int = 20_000, overlap: float = 0.6, timeout_s: float = 600.0) -> dict:
    ids = party_ids(parties, per_party, overlap)
    psi, join = run_psi(ids, timeout_s), hash_join(ids)
    if psi["intersection"] != join["intersection"]:
        raise RuntimeError(f"PSI found {psi['intersection']} common ids, the hash join {join['intersection']}")
    return {"parties": parties, "ids_per_party": per_party, "overlap": overlap,
            "psi_ids_per_s": per_party / psi["seconds"], "join_ids_per_s": per_party / join["seconds"],
            "psi_ids_per_cpu_s": per_party / psi["cpu_seconds"],
            "join_ids_per_cpu_s": per_party / join["cpu_seconds"],
            "psi_s": psi["seconds"], "join_s": join["seconds"], "intersection": psi["intersection"],
            "psi_mb_sent_per_party": psi["mb_sent_per_party"]}


def lines(result: dict) -> list[str]:
    slower = result["join_ids_per_cpu_s"] / result["psi_ids_per_cpu_s"]
    return [
        f"PSI, {result['parties']} parties x {result['ids_per_party']:,} ids ({result['overlap']:.0%} common, "
        f"{result['intersection']:,} found); ids per second per party, of wall time and of CPU time:",
        f"  {'private set intersection':<26}{result['psi_ids_per_s']:>12,.0f} wall "
        f"{result['psi_ids_per_cpu_s']:>12,.0f} cpu"
        f"  ({result['psi_s']:.2f} s, {result['psi_mb_sent_per_party']:.1f} MB sent per party)",
        f"  {'plain hash join (pandas)':<26}{result['join_ids_per_s']:>12,.0f} wall "
        f"{result['join_ids_per_cpu_s']:>12,.0f} cpu"
        f"  ({result['join_s']:.4f} s; PSI takes {slower:,.0f}x the CPU)",
    ]


def check_wire(per_party: int, common: int, timeout_s: float = 3600.0) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "psi"))
    from psi_parties import check_wire as check

    start = time.perf_counter()
    sent = check(per_party, common, timeout_s)
    seconds = time.perf_counter() - start
    print(f"PSI wire check, 3 parties x {per_party:,} ids ({common:,} common): exact intersection, one order, "
          f"no id or unblinded hash in {sent / 1e6:.1f} MB of frames ({seconds:.0f} s, spawning included)", flush=True)
    return {"ids_per_party": per_party, "common": common, "seconds": seconds, "bytes_sent": sent}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, default=3)
    parser.add_argument("--ids", type=int, default=20_000, help="ids per party")
    parser.add_argument("--overlap", type=float, default=0.6, help="share of each party's ids every party holds")
    parser.add_argument("--check-wire", action="store_true", help="3 parties: check every frame for ids (see above)")
    args = parser.parse_args(argv)
    if args.check_wire:
        return check_wire(args.ids, int(args.ids * args.overlap))
    result = measure(args.parties, args.ids, args.overlap)
    print("\n".join(lines(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
