"""``cotrain run transport=mpi`` on one machine: start the parties under this venv's mpirun.

MPI ranks must be started by an MPI launcher, so a local launch with the MPI transport
re-runs the same command as ``mpirun -n <parties> python -m launch run ... run_id=<id>``; each
rank then takes its rank from MPI and regenerates the demo data itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from launch.local import LaunchError
from launch.processes import descendants
from parties.config import RunConfig
from parties.dealer import world_size


def mpirun_executable() -> str:
    beside = Path(sys.executable).parent / "mpirun"
    found = str(beside) if beside.exists() else shutil.which("mpirun")
    if not found:
        raise LaunchError("transport=mpi needs mpirun (pip install mpich mpi4py), and none was found")
    return found


def launch_mpirun(config: RunConfig, overrides: Sequence[str], run_id: str) -> None:
    """Run every party under mpirun; raise LaunchError when the job fails or runs too long."""
    kept = [o for o in overrides if o.partition("=")[0].lstrip("+~") not in ("run_id", "num_parties")]
    processes = world_size(config)  # the dealer too, where the suite has one
    # MPICH would SIGKILL every rank the moment one dies, naming only a PID; without its
    # clean-up the survivors name the dead party themselves and exit (parties.transport.peer_watch)
    command = [mpirun_executable(), "-disable-auto-cleanup", "-n", str(processes), sys.executable, "-m", "launch",
               "run", *kept, f"run_id={run_id}", f"num_parties={config.num_parties}"]
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    job = subprocess.Popen(command, env=environment)
    ended = _watch(job, config.launch.timeout_s)
    if job.returncode != 0:
        first = f" (first to end: {', '.join(ended[0])})" if ended else ""
        raise LaunchError(f"mpirun exited with code {job.returncode}{first}; see the party errors above")


def _watch(job: subprocess.Popen, timeout_s: float) -> list[list[str]]:
    """Wait for mpirun; returns the parties whose processes ended, batch by batch as seen
    (mpirun itself reports only PIDs, or nothing at all without its clean-up)."""
    running: dict[int, str] = {}
    ended: list[list[str]] = []
    deadline = time.monotonic() + timeout_s
    while job.poll() is None:
        if time.monotonic() > deadline:
            job.kill()
            raise LaunchError(f"the job ran past launch.timeout_s={timeout_s:g}; mpirun was stopped")
        now = {pid: name.removeprefix("cotrain:") for pid, name in descendants([job.pid]).items()
               if name.startswith("cotrain:")}
        if gone := sorted(name for pid, name in running.items() if pid not in now):
            ended.append(gone)
        running = now
        time.sleep(0.02)
    return ended
