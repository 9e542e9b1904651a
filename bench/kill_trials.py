"""SIGKILL one party at a random moment of training, under every launcher, and time the end.

    PYTHONPATH=. .venv/bin/python bench/kill_trials.py [--trials 10] [--launchers local,mpirun,torchrun,host]

Each trial starts a small three-bank job, waits until bank1 is training, sleeps a random
0-3 s, kills a random process of the job (a bank or, with a dealer, the dealer) with
SIGKILL, and measures the seconds until every process of the job has exited. Per launcher
it prints the kill-to-exit times (min / median / max), how many trials ended non-zero with
every survivor's error naming the killed party, and any orphan processes.

| launcher | job                                                                       |
|----------|---------------------------------------------------------------------------|
| local    | ``cotrain run`` (zmq, one process per bank and the dealer)                 |
| mpirun   | ``cotrain run transport=mpi`` (re-runs itself under mpirun)                |
| torchrun | ``torchrun --standalone --nproc_per_node 4 -m launch run launch=torchrun`` |
| host     | one ``cotrain run launch=host party.rank=i`` per bank and the dealer (zmq) |

Every job runs ``protocol=dealer``, so the dealer process is part of every job.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.memory_attack import free_ports
from launch.processes import descendants

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAUNCHERS = ("local", "mpirun", "torchrun", "host")
PARTIES = 3


@dataclass
class Trial:
    launcher: str
    victim: str = ""
    seconds: float = float("nan")
    exit_codes: list[int] = field(default_factory=list)
    unnamed: list[str] = field(default_factory=list)  # survivors whose error does not name the victim
    orphans: list[int] = field(default_factory=list)
    output: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.exit_codes) and all(self.exit_codes) and not self.unnamed and not self.orphans


def _tiny(output_dir: Path, run_id: str) -> list[str]:
    return [f"num_parties={PARTIES}", "protocol=dealer", "data.rows=600", "data.test_rows=300", "train.epochs=200",
            "train.batch_size=50", f"output_dir={output_dir}", f"run_id={run_id}", "transport.connect_timeout_s=120"]


def commands(launcher: str, work: Path, run_id: str) -> list[list[str]]:
    """The command lines that start one job (several for one command per host)."""
    cotrain = str(BIN / "cotrain")
    tiny = _tiny(work / "outputs", run_id)
    if launcher == "local":
        return [[cotrain, "run", *tiny]]
    if launcher == "mpirun":
        return [[cotrain, "run", "transport=mpi", *tiny]]
    if launcher == "torchrun":  # the dealer is one more process
        return [[str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(PARTIES + 1), "-m", "launch", "run",
                 "launch=torchrun", *tiny]]
    if launcher == "host":
        from parties.transport.keys import generate_party_keys

        names = [f"bank{rank}" for rank in range(PARTIES)] + ["dealer"]
        generate_party_keys(work / "keys", names)
        peers = ",".join(f'{name}:"tcp://127.0.0.1:{port}"' for name, port in zip(names, free_ports(len(names))))
        return [[cotrain, "run", "launch=host", f"party.rank={rank}", "transport=zmq",
                 f"transport.key_dir={work / 'keys'}", f"++transport.peers={{{peers}}}", *tiny]
                for rank in range(len(names))]
    raise ValueError(f"unknown launcher {launcher!r}; choose from {', '.join(LAUNCHERS)}")


def _wait_for_training(log: Path, jobs: list[subprocess.Popen], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and "training" in log.read_text():
            return
        if all(job.poll() is not None for job in jobs):
            raise RuntimeError(f"the job ended before training:\n{_collect(jobs)[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"no training within {timeout_s:g} s ({log})")


def _collect(jobs: list[subprocess.Popen]) -> str:
    return "\n".join(job.communicate()[0] for job in jobs)


def kill_trial(launcher: str, rng: random.Random, victim: str | None = None, timeout_s: float = 60.0) -> Trial:
    """One job under ``launcher``; kill ``victim`` (or a random process of the job) mid-training."""
    trial = Trial(launcher)
    with tempfile.TemporaryDirectory(prefix="cotrain-kill-") as folder:
        work, run_id = Path(folder), f"kill-{uuid.uuid4().hex[:8]}"
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        jobs = [subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
                for command in commands(launcher, work, run_id)]
        roots = [job.pid for job in jobs]
        try:
            _wait_for_training(work / "outputs" / run_id / "bank1" / "party.log", jobs, 240)
            time.sleep(rng.uniform(0, 3))
            parties = {name.removeprefix("cotrain:"): pid for pid, name in descendants(roots).items()
                       if name.startswith("cotrain:")}
            trial.victim = victim or rng.choice(sorted(parties))
            os.kill(parties[trial.victim], signal.SIGKILL)
            killed = time.monotonic()
            deadline = killed + timeout_s
            while descendants(roots) and time.monotonic() < deadline:
                time.sleep(0.05)
            trial.seconds = time.monotonic() - killed
            trial.orphans = sorted(descendants(roots))
        finally:
            for pid in descendants(roots):  # whatever is left: stop it, and report it as an orphan
                os.kill(pid, signal.SIGKILL)
            trial.output = _collect(jobs)
        trial.exit_codes = [job.returncode for job in jobs]
        if launcher == "host":  # the killed party's own command: its code is the signal's
            trial.exit_codes = [code for code, pid in zip(trial.exit_codes, roots) if pid != parties[trial.victim]]
        names = [f"bank{rank}" for rank in range(PARTIES)] + ["dealer"]
        rank = names.index(trial.victim)
        for survivor in names:
            if survivor == trial.victim:
                continue
            lines = [line for line in trial.output.splitlines() if f"cotrain: party {survivor} failed:" in line]
            if not any(f"party {rank} ({trial.victim})" in line for line in lines):
                trial.unnamed.append(survivor)
    return trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--launchers", default=",".join(LAUNCHERS))
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    rng = random.Random(arguments.seed)
    rows = []
    for launcher in arguments.launchers.split(","):
        trials = []
        for index in range(arguments.trials):
            try:
                trial = kill_trial(launcher, rng)
            except RuntimeError as error:  # the job never reached training (a loaded machine): no trial
                print(f"{launcher} trial {index + 1}: not run: {str(error).splitlines()[0]}", flush=True)
                continue
            trials.append(trial)
            print(f"{launcher} trial {index + 1}: killed {trial.victim}, all gone after {trial.seconds:.2f} s, "
                  f"exit codes {trial.exit_codes}, unnamed by {trial.unnamed or 'nobody'}, "
                  f"orphans {trial.orphans or 'none'}", flush=True)
            if not trial.ok:
                print(trial.output[-3000:], flush=True)
        times = [trial.seconds for trial in trials] or [float("nan")]
        rows.append((launcher, min(times), statistics.median(times), max(times),
                     sum(trial.ok for trial in trials), len(trials)))
    print(f"\n{'launcher':<10} {'min s':>7} {'median s':>9} {'max s':>7}  named, non-zero, no orphans")
    for launcher, low, middle, high, good, count in rows:
        print(f"{launcher:<10} {low:>7.2f} {middle:>9.2f} {high:>7.2f}  {good}/{count}")


if __name__ == "__main__":
    main()
