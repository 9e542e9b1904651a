"""Run one cotrain job with one party per network namespace (see :mod:`netlab`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from netlab import NetLab

COTRAIN = str(Path(sys.executable).parent / "cotrain")
PORT = 29500  # inside the lab every party has its own network stack, so a fixed port is fine


def transport_overrides(lab: NetLab, transport: str) -> list[str]:
    if transport == "gloo":
        return ["transport=gloo", f"transport.master_addr={lab.addresses[0]}", f"transport.master_port={PORT}"]
    if transport == "zmq":
        peers = ",".join(f"bank{rank}:'tcp://{address}:{PORT}'" for rank, address in enumerate(lab.addresses))
        landed = (Path(__file__).resolve().parents[1] / "conf" / "transport" / "zmq.yaml").exists()
        return ["transport=zmq" if landed else "transport.name=zmq", "++transport.encrypt=false",
                f"++transport.peers={{{peers}}}"]
    raise ValueError(f"no lab recipe for transport {transport}")


def run_lab_job(lab: NetLab, transport: str, output_dir: Path, run_id: str, overrides: Sequence[str],
                timeout_s: float = 300.0) -> tuple[dict, list[str]]:
    """Start party i in namespace i (one command per "host"); return rank 0's summary and the logs."""
    environment = {"GLOO_SOCKET_IFNAME": "eth0", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    processes = []
    for rank in range(lab.parties):
        command = [COTRAIN, "run", "launch=host", f"party.rank={rank}", f"num_parties={lab.parties}",
                   f"output_dir={output_dir}", f"run_id={run_id}", *transport_overrides(lab, transport), *overrides]
        processes.append(lab.popen(rank, command, env=environment, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + timeout_s
    logs = []
    for rank, process in enumerate(processes):
        try:
            output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise RuntimeError(f"the lab job ran past {timeout_s:g} s") from None
        logs.append(output)
        if process.returncode != 0:
            raise RuntimeError(f"party {rank} exited with {process.returncode}:\n{output[-3000:]}")
    return json.loads((output_dir / run_id / "summary.json").read_text()), logs
