"""Helpers for launcher tests: real mpirun/torchrun jobs, their summaries, and their processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COTRAIN = str(BIN / "cotrain")
MPIRUN = str(BIN / "mpirun")
TORCHRUN = str(BIN / "torchrun")


def unique_run_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def tiny(parties: int, output_dir: Path, run_id: str, epochs: int = 1, rows: int = 150) -> list[str]:
    """A small job: a few seconds of secure training per epoch on two cores."""
    return [f"num_parties={parties}", f"data.rows={rows}", "data.test_rows=300", f"train.epochs={epochs}",
            "train.batch_size=75", f"output_dir={output_dir}", f"run_id={run_id}",
            "transport.timeout_s=30", "transport.connect_timeout_s=60", "protocol=tfp"]


def job_env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def start(command: list[str], **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=job_env(**extra_env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout_s: float) -> tuple[int, str]:
    """Wait for a job; on timeout kill its whole process group and fail."""
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"job did not finish within {timeout_s} s:\n{output[-4000:]}") from None
    return process.returncode, output


def summary(output_dir: Path, run_id: str) -> dict:
    return json.loads((output_dir / run_id / "summary.json").read_text())


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker`` (pgrep -f; zombies excluded)."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    alive = []
    for pid in map(int, found):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and pid != os.getpid():
            alive.append(pid)
    return alive


def wait_until_gone(marker: str, timeout_s: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def stop_job(process: subprocess.Popen, marker: str) -> None:
    """Kill a job that is still running: its process group, then any process carrying ``marker``
    (launchers may start parties in sessions of their own)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def environment_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def party_pid(marker: str, rank_variable: str, rank: int, timeout_s: float = 60.0) -> int:
    """The pid of the party process with ``rank_variable=rank`` in its environment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in processes_with(marker):
            environment = environment_of(pid)
            if environment.get(rank_variable) == str(rank):
                return pid
        time.sleep(0.2)
    raise AssertionError(f"no party process with {rank_variable}={rank} appeared")


def wait_for_training(output_dir: Path, run_id: str, party: str, timeout_s: float = 90.0) -> None:
    """Until ``party`` has shared its data (its log says so): the job is mid-run."""
    log = output_dir / run_id / party / "party.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and "training" in log.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{party} never started training ({log})")


def assert_close_to_plaintext(result: dict, parties: int, transport: str) -> None:
    assert result["num_parties"] == parties and result["transport"] == transport
    assert result["secure"] is not None and result["plaintext"] is not None, result
    assert abs(result["secure"]["auc"] - result["plaintext"]["auc"]) <= 0.01, (result["secure"], result["plaintext"])


def kill_rank_mid_training(job: subprocess.Popen, output_dir: Path, run_id: str, rank_variable: str,
                           timeout_s: float) -> tuple[int, str]:
    """Kill party 1 once it is training; the job's exit code and output (stopped either way)."""
    try:
        wait_for_training(output_dir, run_id, "bank1")
        os.kill(party_pid(run_id, rank_variable, 1), signal.SIGKILL)
        return finish(job, timeout_s)
    finally:
        stop_job(job, run_id)
