"""``make bench`` / ``python -m bench``: every workload on every system, side by side.

Systems, all in the same run: plaintext torch; plain CrypTen 0.4.1 (its own communicator
over gloo, TFP, ``crypten.init()`` with RENDEZVOUS variables, only our compat fixes); and
this project for every registered transport x every ``conf/protocol/*.yaml`` suite. Each
secure system is one launch of its party processes, which run all of W1-W6 in turn; W7 is
``cotrain run train.epochs=1`` itself for this project. The ``malicious`` suite runs on gloo
in a section of its own, beside the ``dealer`` suite at the same sizes (``MALICIOUS_SIZES``)
with a longer phase limit; its cells in the table name the size that ran and the ratio.

Prints one table and writes ``bench/results/<UTC date-time>.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.netfloor import measure_loopback  # noqa: E402
from bench.workloads import BATCH, CUDA_WORKLOADS, LR, MALICIOUS_SIZES, SIZES, WORKLOADS  # noqa: E402

PLAIN, CRYPTEN = "plaintext", "crypten-tfp"


def free_port(span: int = 1) -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + span < 65000 and all(_port_free(port + i) for i in range(1, span)):
            return port
    return port


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def protocol_suites() -> dict[str, dict]:
    suites = {}
    for path in sorted((ROOT / "conf" / "protocol").glob("*.yaml")):
        suites[path.stem] = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items()}
    return suites


def transports() -> list[str]:
    from parties.transport import transport_names

    return transport_names()


def mpirun() -> str | None:
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    import shutil

    return shutil.which("mpirun")


def party_path() -> str:
    """The parties' PYTHONPATH: this checkout first, then the caller's (where an optional
    package such as TenSEAL may live outside the environment)."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- launching secure systems ------------------------------------------------------------------
class Launch:
    """One secure system's party processes, started with a control folder for turns."""

    def __init__(self, name: str, spec: dict, world: int, share_s: float | None = None) -> None:
        self.name, self.world = name, world
        self.share_s, self.used_s = share_s, 0.0
        self.folder = Path(tempfile.mkdtemp(prefix="cotrain-bench-"))
        self.error: str | None = None
        self.turn = 0
        # a setup and its repeats per workload: after the last, the system's processes end
        # (sessions closed, interpreters torn down: CPU on the same cores) before another
        # system takes its turn, or the next system's phase would pay for it
        self.phases = sum(1 + spec.get("repeats", {}).get(name, WORKLOADS[name][2]) for name in spec.get("workloads", []))
        self.processes: list[subprocess.Popen] = []
        if spec.get("transport") == "zmq":
            from parties.transport.keys import generate_party_keys
            from parties.dealer import DEALER_NAME

            names = [f"p{i}" for i in range(spec["parties"])] + ([DEALER_NAME] if world > spec["parties"] else [])
            generate_party_keys(self.folder / "keys", names)
            spec = {**spec, "transport_options": {"key_dir": str(self.folder / "keys")}}
        self.spec = {**spec, "control": str(self.folder)}
        spec_path = self.folder / "spec.json"
        spec_path.write_text(json.dumps(self.spec))
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": party_path()}
        command = [sys.executable, "-m", "bench.party", str(spec_path)]
        self._stderr = open(self.folder / "stderr.log", "wb")
        if spec.get("transport") == "mpi":
            runner = mpirun()
            if runner is None:
                self.error = "n/a: no mpirun (pip install mpich mpi4py)"
                return
            self.processes = [subprocess.Popen([runner, "-n", str(world), *command], cwd=ROOT, env=environment,
                                               stdout=subprocess.DEVNULL, stderr=self._stderr)]
        else:
            self.processes = [subprocess.Popen([*command, str(rank)], cwd=ROOT, env=environment,
                                               stdout=subprocess.DEVNULL, stderr=self._stderr)
                              for rank in range(world)]

    @property
    def alive(self) -> bool:
        return self.error is None and any(p.poll() is None for p in self.processes)

    def started(self) -> bool:
        """Whether every process has started (``bench.party.announce_ready``), or the system is done."""
        return not self.alive or len(list(self.folder.glob("ready-*"))) >= self.world

    def take_turn(self, timeout_s: float) -> bool:
        """Let rank 0 run its next phase; False once the system has finished or failed."""
        if not self.alive:
            return False
        if self.share_s is not None:
            if self.used_s > self.share_s:
                self.error = f"n/a: skipped, past this system's time share ({self.share_s:g} s)"
                self.kill()
                return False
            timeout_s = min(timeout_s, self.share_s)
        self.turn += 1
        started = time.monotonic()
        (self.folder / f"go-{self.turn}").write_text("")
        done = self.folder / f"done-{self.turn}"
        deadline = time.monotonic() + timeout_s
        while not done.exists():
            if not self.alive:
                return False
            if time.monotonic() > deadline:
                self.error = f"n/a: a phase ran past {timeout_s:g} s"
                self.kill()
                return False
            time.sleep(0.01)
        self.used_s += time.monotonic() - started
        if self.turn == self.phases:
            self._wait_for_exit(30.0)
        return True

    def _wait_for_exit(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                return  # finish() deals with it

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait()

    def finish(self) -> dict[int, dict]:
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
                self.error = self.error or "n/a: parties did not exit"
        self._stderr.close()
        if self.error is None:
            failed = [p.returncode for p in self.processes if p.returncode != 0]
            if failed:
                lines = (self.folder / "stderr.log").read_text(errors="replace").strip().splitlines()
                self.error = f"n/a: party exited {failed[0]} {lines[-1] if lines else ''}"[:160]
        results = {}
        for path in self.folder.glob("rank*.json"):
            data = json.loads(path.read_text())
            results[data["rank"]] = data
        if self.spec.get("profile"):
            for profile in self.folder.glob("rank*.prof"):  # <prefix>-<system>.prof is rank 0's
                suffix = "" if profile.stem == "rank0" else f"-{profile.stem}"
                shutil.copy(profile, self.spec["profile"].replace(".prof", f"{suffix}.prof"))
        shutil.rmtree(self.folder, ignore_errors=True)
        return results


def variant_systems(systems: list[tuple[str, dict]], variants: list[str]) -> list[tuple[str, dict]]:
    """For ``--variant kind=name``: a twin of each headline cotrain system with that protocol
    part swapped, to measure a part against the default side by side."""
    twins = []
    for variant in variants:
        kind, _, name = variant.partition("=")
        if not name:
            raise SystemExit(f"--variant {variant!r}: expected KIND=NAME, e.g. truncation=pairs")
        for system, base in systems[:4]:
            if base.get("system") == "cotrain":
                twins.append((f"{system}[{variant}]", {**base, "protocol": {**base["protocol"], kind: name}}))
    return twins


def launch_cells(launch: Launch, workloads: list[str]) -> dict[str, dict]:
    """Each workload's cell from a finished launch (its error where it left no result)."""
    per_rank = launch.finish()
    cells = {}
    # the dealer's process CPU over the whole launch (every workload, setup and imports too),
    # for the JSON: the dealer takes its turns on the parties' cores
    parties = launch.spec.get("parties", 2)
    dealer_cpu = per_rank.get(parties, {}).get("process_cpu") if launch.world > parties else None
    for name in workloads:
        cell = combine(per_rank, 2, name)
        if launch.error and "wall_s" not in cell and cell.get("na") == "n/a: no result":
            cell = {"na": launch.error}
        if dealer_cpu is not None and "wall_s" in cell:
            cell["dealer_process_cpu_s"] = dealer_cpu
        cells[name] = cell
    return cells


def run_together(launches: list[Launch], phase_timeout_s: float, deadline: float) -> None:
    """Round-robin turns: each system runs one phase (a setup or one repeat) while the
    others wait, so load from elsewhere on the machine falls on all of them alike. The first
    turn waits until every system's processes have started: their imports and memory set-up
    would otherwise run beside the first system's timed phases."""
    active = [launch for launch in launches if launch.alive]
    start_by = time.monotonic() + phase_timeout_s
    while not all(launch.started() for launch in active) and time.monotonic() < start_by:
        time.sleep(0.01)
    while active:
        for launch in list(active):
            if time.monotonic() > deadline:
                launch.error = "n/a: skipped, over the bench's time budget"
                launch.kill()
            if not launch.take_turn(phase_timeout_s):
                active.remove(launch)


def combine(per_rank: dict[int, dict], parties: int, workload: str) -> dict:
    """One cell from the parties' samples: wall = slowest party, CPU and page faults summed,
    bytes/rounds max."""
    entries = [per_rank[r]["results"].get(workload) for r in range(parties) if r in per_rank and "results" in per_rank[r]]
    if len(entries) < parties or any(e is None for e in entries):
        errors = [per_rank[r].get("error") for r in per_rank if per_rank[r].get("error")]
        return {"na": (f"n/a: {errors[0]}"[:140] if errors else "n/a: no result")}
    for entry in entries:
        if "error" in entry:
            return {"na": ("n/a: " + entry["error"])[:140], "trace": entry.get("trace")}
    repeats = len(entries[0]["samples"])
    walls = [max(e["samples"][i]["wall"] for e in entries) for i in range(repeats)]
    cpus = [sum(e["samples"][i]["cpu"] for e in entries) for i in range(repeats)]
    sent = [max(e["samples"][i]["bytes"] for e in entries) for i in range(repeats)]
    rounds = [max(e["samples"][i]["rounds"] for e in entries) for i in range(repeats)]
    cell = {"wall_s": statistics.median(walls), "walls": walls, "cpu_s": statistics.median(cpus),
            "bytes": statistics.median(sent), "rounds": statistics.median(rounds), "repeats": repeats}
    if all("faults" in e["samples"][i] for e in entries for i in range(repeats)):  # summed, as the CPU
        cell["faults"] = statistics.median(sum(e["samples"][i]["faults"] for e in entries) for i in range(repeats))
    aucs = [e.get("auc") for e in entries if e.get("auc") is not None]
    if aucs:
        cell["auc"] = aucs[0]
    return cell


# -- plaintext ---------------------------------------------------------------------------------
def plaintext_cell(name: str, device: str | None, repeats: int = 0) -> dict | None:
    """Plaintext torch's figures for workload ``name`` (None for W8, two secure runs compared)."""
    from bench.sequence_step import plaintext_step
    from bench.workloads import demo_shaped_data, plaintext_epoch, training_data

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(11)
    target = torch.device(device or "cpu")
    score = None
    if name == "W1":
        x, y = torch.randn(1_000_000, generator=generator).to(target), torch.randn(1_000_000, generator=generator).to(target)
        run = lambda: x * y  # noqa: E731
    elif name in ("W2a", "W2b"):
        n = 256 if name == "W2a" else 1024
        a, b = torch.randn(n, n, generator=generator).to(target), torch.randn(n, n, generator=generator).to(target)
        run = lambda: a @ b  # noqa: E731
    elif name == "W3":
        x = torch.randn(100_000, generator=generator).to(target)
        run = lambda: torch.relu(x)  # noqa: E731
    elif name == "W4":
        x = (torch.randn(100_000, generator=generator) * 4).to(target)
        run = lambda: torch.sigmoid(x)  # noqa: E731
    elif name == "W8":
        return None
    elif name == "W9":
        run = plaintext_step()
    else:
        data = demo_shaped_data() if name == "W7" else training_data()
        run, score = plaintext_epoch("mlp" if name == "W6" else "logreg", data, 128 if name == "W7" else BATCH, LR, target)
    walls, cpus, auc = [], [], None
    for repeat in range(repeats or WORKLOADS[name][2]):
        cpu0, start = time.process_time(), time.perf_counter()
        run()
        if target.type == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu0)
        if repeat == 0 and score is not None:  # held-out AUC after one epoch, as the secure systems
            auc = score()
    cell = {"wall_s": statistics.median(walls), "walls": walls, "cpu_s": statistics.median(cpus),
            "bytes": 0, "rounds": 0, "repeats": len(walls)}
    if auc is not None:
        cell["auc"] = auc
    return cell


# -- W7 and W8 through `cotrain run` -------------------------------------------------------------
def demo_job(transport: str, suite: str, timeout_s: float) -> dict:
    cpu0 = _cpu_children()
    cell = demo_jobs([[f"transport={transport}", f"protocol={suite}"]], timeout_s)[0]
    if "wall_s" in cell:
        cell.update(cpu_s=_cpu_children() - cpu0, note="cpu: whole job")
    return cell


def demo_jobs(overrides: list[list[str]], timeout_s: float) -> list[dict]:
    """``cotrain run train.epochs=1`` with each list of overrides, all started at once (so load
    from elsewhere falls on them alike); one cell per job from its summary's first epoch."""
    with tempfile.TemporaryDirectory(prefix="cotrain-bench-job-") as folder:
        processes = []
        for index, extra in enumerate(overrides):
            command = [sys.executable, "-m", "launch", "run", "train.epochs=1", f"output_dir={folder}",
                       f"run_id=bench{index}", "log_level=WARNING", *extra]
            if "transport=zmq" in extra:
                command.append("transport.encrypt=true")
            processes.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": party_path()}))
        deadline = time.monotonic() + timeout_s
        cells = []
        for index, process in enumerate(processes):
            try:
                _, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                cells.append({"na": f"n/a: timed out after {timeout_s:g} s"})
                continue
            cells.append(_job_cell(Path(folder) / f"bench{index}" / "summary.json", process.returncode, stderr))
        return cells


def _job_cell(summary_path: Path, returncode: int, stderr: bytes) -> dict:
    if returncode != 0 or not summary_path.exists():
        lines = stderr.decode(errors="replace").strip().splitlines()
        reason = next((l for l in reversed(lines) if l.startswith("cotrain:")), lines[-1] if lines else "")
        return {"na": f"n/a: {reason}"[:160]}
    summary = json.loads(summary_path.read_text())
    epoch = summary["per_epoch"][0]
    return {"wall_s": epoch["seconds"], "walls": [epoch["seconds"]], "cpu_s": float("nan"),
            "bytes": epoch["bytes_sent"], "rounds": epoch["rounds"], "repeats": 1,
            "auc": summary["secure"]["auc"], "plaintext_auc": summary["plaintext"]["auc"],
            "job_wall_s": summary["job_wall_s"]}


# the model of W8: the built-in MLP's config against the same network written as a user's module
W8_SYSTEM = ("gloo", "tfp")
W8_JOBS = {"model=mlp": ["model=mlp"],
           "model=custom (bench.models.UserMLP)": ["model=custom", "model._target_=bench.models.UserMLP"]}


def custom_model_cells(timeout_s: float) -> dict[str, dict]:
    """W8: one epoch of the demo job with the built-in ``mlp`` config and with the same network
    as a user's module by import path, run at the same time; the second's wall over the first's."""
    transport, suite = W8_SYSTEM
    names = [f"cotrain-{transport}-{suite} {label}" for label in W8_JOBS]
    cells = demo_jobs([[f"transport={transport}", f"protocol={suite}", *extra] for extra in W8_JOBS.values()],
                      timeout_s)
    builtin, custom = cells
    if "wall_s" in builtin and "wall_s" in custom:
        custom["note"] = f"x{custom['wall_s'] / builtin['wall_s']:.2f} the built-in's wall (target <= 1.10)"
    return dict(zip(names, cells))


# -- W9: one step of the sequence transformer, per party -------------------------------------------
W9_SYSTEM = ("zmq", "dealer")  # the sequence job's defaults


def sequence_step_cells(timeout_s: float, deadline: float) -> dict[str, dict]:
    """W9 per party (seconds, bytes, rounds); bank0's cell has its rounds by layer kind too."""
    from protocols.suite import ProtocolConfig, needs_dealer

    transport, suite = W9_SYSTEM
    protocol = protocol_suites()[suite]
    world = 3 + int(needs_dealer(ProtocolConfig(**protocol)))
    spec = {"system": "cotrain", "transport": transport, "protocol": protocol, "suite": suite, "parties": 3,
            "workloads": ["W9"], "rounds_by_kind": True, "port": free_port(world)}
    launch = Launch(f"cotrain-{transport}-{suite}", spec, world)
    run_together([launch], timeout_s, deadline)
    per_rank = launch.finish()
    cells = {}
    for rank in range(3):
        entry = per_rank.get(rank, {}).get("results", {}).get("W9")
        name = f"{launch.name} bank{rank}"
        if not entry or "samples" not in entry:
            reason = (entry or {}).get("error") or per_rank.get(rank, {}).get("error") or launch.error or "no result"
            cells[name] = {"na": reason if str(reason).startswith("n/a") else f"n/a: {reason}"[:160]}
            continue
        sample = entry["samples"][0]
        cells[name] = {"wall_s": sample["wall"], "walls": [sample["wall"]], "cpu_s": sample["cpu"],
                       "bytes": sample["bytes"], "rounds": sample["rounds"], "repeats": 1,
                       "rounds_by_kind": sample.get("rounds_by_kind", {})}
    return cells


def rounds_by_kind_line(cells: dict[str, dict]) -> str:
    kinds = next((cell["rounds_by_kind"] for cell in cells.values() if "rounds_by_kind" in cell), {})
    total = sum(kinds.values())
    if not total:
        return "W9 rounds by layer kind: n/a"
    shares = ", ".join(f"{kind} {count} ({100 * count / total:.0f} %)" for kind, count in kinds.items())
    return f"W9 rounds of bank0's step by layer kind: {shares}; {total} in all"


# -- floor, table ------------------------------------------------------------------------------
def floor_for(name: str, cells: dict[str, dict], net: dict) -> dict | None:
    """The bytes a party must send and rounds it must take, over this machine's loopback."""
    if name == "W1":
        need_bytes, need_rounds, how = 2 * 1_000_000 * 8, 1, "2n elements, 1 round (Beaver)"
    elif name in ("W2a", "W2b"):
        n = 256 if name == "W2a" else 1024
        need_bytes, need_rounds, how = 2 * n * n * 8, 1, "2n^2 elements, 1 round (Beaver)"
    else:
        secure = [c for s, c in cells.items() if s != PLAIN and "wall_s" in c]
        if not secure:
            return None
        need_bytes = min(c["bytes"] for c in secure)
        need_rounds = min(c["rounds"] for c in secure)
        how = "fewest bytes and rounds any system here needed"
    seconds = need_bytes / net["bandwidth_Bps"] + need_rounds * net["rtt_s"]
    return {"bytes": need_bytes, "rounds": need_rounds, "seconds": seconds, "how": how}


def fmt(value: float, digits: int = 3) -> str:
    if value != value:  # nan
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}g}"


def table(results: dict) -> str:
    header = ["workload", "system", "wall s", "cpu s", "MB/party", "rounds", "xCrypTen", "xplain", "floor s", "xfloor", "note"]
    rows = [header]
    for name, cells in results["cells"].items():
        base = cells.get(CRYPTEN, {}).get("wall_s")
        plain = cells.get(PLAIN, {}).get("wall_s")
        floor = results["floors"].get(name)
        for system, cell in cells.items():
            label = f"{name} {WORKLOADS[name][0]}" if system == next(iter(cells)) else ""
            if "wall_s" not in cell:
                na = cell.get("na", "n/a")
                rows.append([label, system, na if na.startswith("n/a") else f"n/a: {na}", "", "", "", "", "", "", "", ""])
                continue
            wall = cell["wall_s"]
            note = f"auc {cell['auc']:.4f}" if "auc" in cell else ""
            if "plaintext_auc" in cell:
                note += f" (its plaintext {cell['plaintext_auc']:.4f})"
            if cell.get("note"):
                note = f"{note}; {cell['note']}".strip("; ")
            if "faults" in cell:  # the parties' minor page faults: fresh memory touched
                note = f"{note}; {cell['faults'] / 1000:.1f}k faults".strip("; ")
            rows.append([
                label, system, fmt(wall), fmt(cell["cpu_s"]), fmt(cell["bytes"] / 1e6) if system != PLAIN else "0",
                str(int(cell["rounds"])), f"{wall / base:.2f}" if base else "-", f"{wall / plain:.0f}" if plain else "-",
                fmt(floor["seconds"]) if floor and system != PLAIN else "", f"{wall / floor['seconds']:.0f}" if floor and system != PLAIN and floor["seconds"] > 0 else "", note,
            ])
    widths = [max(len(str(row[i])) for row in rows if not str(row[2]).startswith("n/a")) for i in range(len(header))]
    widths[0] = max(len(str(row[0])) for row in rows)
    widths[1] = max(len(str(row[1])) for row in rows)
    lines = []
    for row in rows:
        if len(row) > 2 and str(row[2]).startswith("n/a"):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
        else:
            lines.append("  ".join(f"{str(v):<{widths[i]}}" if i < 2 or i == len(row) - 1 else f"{str(v):>{widths[i]}}"
                                   for i, v in enumerate(row)).rstrip())
    return "\n".join(lines)


def psi_section(ids: int, deadline: float, timeout_s: float) -> dict:
    """Private set intersection against a plain hash join (bench/psi_bench.py), printed below the table."""
    from bench.psi_bench import lines, measure

    print()
    if time.monotonic() > deadline:
        print("PSI: n/a: skipped, over the bench's time budget")
        return {"na": "skipped, over the bench's time budget"}
    try:
        result = measure(per_party=ids, timeout_s=max(timeout_s, 300.0))
    except Exception as error:  # one failed section must not lose the table above
        print(f"PSI: n/a: {type(error).__name__}: {error}")
        return {"na": str(error)}
    print("\n".join(lines(result)), flush=True)
    return result


def is_malicious(base: dict) -> bool:
    """Whether a system is this project under a suite with MAC-checked (malicious) security."""
    from protocols.malicious.parts import is_malicious as selects_malicious
    from protocols.suite import ProtocolConfig

    return base.get("system") == "cotrain" and selects_malicious(ProtocolConfig(**base["protocol"]))


def launch_spec(base: dict, workloads: list[str], device: str | None) -> tuple[dict, int]:
    """A two-party launch of ``base`` for ``workloads``: its spec and world size (with the dealer)."""
    spec = {**base, "parties": 2, "workloads": workloads, "device": device}
    world = 2
    if base["system"] == "cotrain":
        from protocols.suite import ProtocolConfig, needs_dealer

        world += int(needs_dealer(ProtocolConfig(**base["protocol"])))
    spec["port"] = free_port(world)
    return spec, world


def malicious_section(malicious: tuple[str, dict], dealer: tuple[str, dict], workloads: list[str],
                      timeout_s: float, budget_s: float) -> dict[str, dict]:
    """W1-W6 of the malicious suite and of the dealer suite launched together, at
    ``MALICIOUS_SIZES``, one repeat each, ``timeout_s`` per phase: {workload: {system: cell}}."""
    t0 = time.perf_counter()
    sizes = {w: MALICIOUS_SIZES[w] for w in workloads}
    launches = []
    for system, base in (dealer, malicious):
        spec, world = launch_spec(base, workloads, None)
        spec.update(repeats={w: 1 for w in workloads}, sizes=sizes)
        launches.append(Launch(system, spec, world))
    run_together(launches, timeout_s, time.monotonic() + budget_s)
    cells: dict[str, dict] = {name: {} for name in workloads}
    for launch in launches:
        for name, cell in launch_cells(launch, workloads).items():
            cells[name][launch.name] = {**cell, "size": sizes[name]}
    print(f"  {malicious[0]} beside {dealer[0]} at the malicious sizes: {time.perf_counter() - t0:.0f} s", flush=True)
    return cells


def malicious_lines(section: dict[str, dict], malicious: str, dealer: str) -> list[str]:
    """The malicious suite against the dealer suite, same run, same size."""
    lines = [f"{malicious} against {dealer}, launched together, the same size (one repeat; W7: the demo job)",
             f"{'workload':<9}{'size':>11}{'dealer s':>10}{'malicious s':>13}{'x time':>8}{'x cpu':>7}"
             f"{'x bytes':>9}{'x rounds':>10}"]
    for name, cells in section.items():
        honest, checked = cells.get(dealer, {}), cells.get(malicious, {})
        size = checked.get("size", "demo")
        if "wall_s" not in honest or "wall_s" not in checked:
            reason = checked.get("na") or honest.get("na") or "n/a"
            lines.append(f"{name:<9}{size:>11}  {reason}")
            continue
        lines.append(f"{name:<9}{size:>11}{fmt(honest['wall_s']):>10}{fmt(checked['wall_s']):>13}"
                     f"{checked['wall_s'] / honest['wall_s']:>8.1f}{checked['cpu_s'] / honest['cpu_s']:>7.1f}"
                     f"{checked['bytes'] / max(honest['bytes'], 1):>9.0f}{checked['rounds'] / max(honest['rounds'], 1):>10.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: W2, W5, W6 on the GPU")
    parser.add_argument("--workloads", default="", help="comma-separated subset, e.g. W5,W6")
    parser.add_argument("--systems", default="", help="comma-separated subset of system names (substring match)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds one phase (a setup or a repeat) may take")
    parser.add_argument("--share", type=float, default=45.0,
                        help="seconds of W1-W6 phases for each system outside the headline group")
    parser.add_argument("--full", action="store_true",
                        help="3 repeats, no time share and W7 for every system (well over 15 minutes)")
    parser.add_argument("--budget", type=float, default=1200.0, help="seconds for the whole bench; later cells are skipped")
    parser.add_argument("--malicious-timeout", type=float, default=420.0,
                        help="seconds one phase of the malicious suite (and its dealer-suite twin) may take")
    parser.add_argument("--malicious-budget", type=float, default=900.0,
                        help="seconds for the malicious section's W1-W6 (at MALICIOUS_SIZES), on top of --budget; "
                             "its W7 and the dealer suite's run after it, each within --malicious-timeout")
    parser.add_argument("--repeats", type=int, default=0, help="repeats per workload (default: 3, 1 for W2b and W7)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--variant", action="append", default=[],
                        help="KIND=NAME: also run each headline cotrain system with that protocol part (repeatable)")
    parser.add_argument("--profile", default="", help="write a cProfile of each secure system's parties here (prefix)")
    parser.add_argument("--psi-ids", type=int, default=20_000,
                        help="ids per party for the PSI row (3 parties, 60%% common); 0 skips it")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("bench: --device cuda but no CUDA device here; skipped")
        return 0
    names = [w for w in (args.workloads.split(",") if args.workloads else WORKLOADS) if w]
    if cuda:
        names = [w for w in names if w in CUDA_WORKLOADS]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
    device = args.device if cuda else None

    started = time.perf_counter()
    net = measure_loopback()
    print(f"loopback: {net['bandwidth_Bps'] / 1e9:.2f} GB/s, round trip {net['rtt_s'] * 1e6:.1f} us "
          f"(10th percentile; median {net['rtt_median_s'] * 1e6:.1f} us)", flush=True)

    suites = protocol_suites()
    # the headline comparison first (gloo, CrypTen's own wire; tfp, CrypTen's own triples; dealer)
    suite_order = sorted(suites, key=lambda name: (name != "tfp", name != "dealer", name))
    transport_order = sorted(transports(), key=lambda name: (name != "gloo", name))
    systems: list[tuple[str, dict]] = [(PLAIN, {}), (CRYPTEN, {"system": "crypten"})]
    for transport in transport_order:
        for suite in suite_order:
            protocol = suites[suite]
            systems.append((f"cotrain-{transport}-{suite}", {"system": "cotrain", "transport": transport,
                                                             "protocol": protocol, "suite": suite}))
    if args.systems:
        wanted = args.systems.split(",")
        systems = [(n, s) for n, s in systems if any(w in n for w in wanted) or n == PLAIN]
    twins = variant_systems(systems, args.variant)

    cells: dict[str, dict[str, dict]] = {}
    for name in names:
        plain = plaintext_cell(name, device, args.repeats)
        cells[name] = {PLAIN: plain} if plain is not None else {}
    deadline = started + args.budget
    two_party = [w for w in names if WORKLOADS[w][1] == 2]
    secure = [(system, base) for system, base in systems if system != PLAIN]
    # the malicious suite runs on the first transport only, in its own section (below)
    malicious = [(system, base) for system, base in secure if is_malicious(base)][:1]
    secure = [(system, base) for system, base in secure if not is_malicious(base)] + malicious
    grouped = [(system, base) for system, base in secure if not is_malicious(base)]
    # the headline comparison (and its --variant twins) takes turns together; the other
    # systems in groups of four
    groups = [grouped[:3] + twins] + [grouped[i:i + 4] for i in range(3, len(grouped), 4)]
    headline = {system for system, _ in groups[0]} if groups else set()
    for group in groups if two_party else []:
        t0 = time.perf_counter()
        launches = []
        for system, base in group:
            full = args.full or system in headline
            spec, world = launch_spec(base, two_party, device)
            if args.repeats or not full:
                spec["repeats"] = {w: args.repeats or 1 for w in two_party}
            if args.profile:
                spec["profile"] = f"{args.profile}-{system}.prof"
            launches.append(Launch(system, spec, world, None if full else args.share))
        run_together(launches, args.timeout, deadline)
        for launch in launches:
            for name, cell in launch_cells(launch, two_party).items():
                cells[name][launch.name] = cell
        print(f"  {', '.join(l.name for l in launches)}: {time.perf_counter() - t0:.0f} s", flush=True)
    twin = {system: next((d for d in grouped if d[1].get("suite") == "dealer"
                          and d[1].get("transport") == base.get("transport")), None)
            for system, base in malicious}
    sections = {}
    for system, base in malicious:
        if twin[system] is None or not two_party or cuda:
            for name in two_party:
                cells[name][system] = {"na": "n/a: no dealer suite on its transport to compare with" if not cuda
                                       else "n/a: protocol=malicious computes on the CPU only"}
            continue
        sections[system] = malicious_section((system, base), twin[system], two_party, args.malicious_timeout,
                                             args.malicious_budget)
        for name in two_party:
            cells[name][system] = dict(sections[system][name][system])
            honest = sections[system][name][twin[system][0]]
            if MALICIOUS_SIZES[name] != SIZES[name] and "wall_s" in cells[name][system]:
                ratio = (f", x{cells[name][system]['wall_s'] / honest['wall_s']:.1f}" if "wall_s" in honest else "")
                cells[name][system]["note"] = (f"size {MALICIOUS_SIZES[name]:,} (not {SIZES[name]:,}); dealer at that "
                                               f"size {fmt(honest.get('wall_s', float('nan')))} s{ratio}")
    if "W7" in names:
        # W7 runs each transport with tfp and each suite on gloo (all of them with --full)
        for system, base in secure:
            t0 = time.perf_counter()
            if not (args.full or base["system"] == "crypten" or base.get("suite") == "tfp"
                    or base.get("transport") == "gloo"):
                cells["W7"][system] = {"na": "n/a: not run (W7 covers each transport with tfp and each "
                                             "suite on gloo; --full runs every pair)"}
                continue
            # the malicious suite's W7 and its dealer-suite twin run whenever its section ran
            compared = is_malicious(base) or any(t is not None and t[0] == system for t in twin.values())
            if not (compared and sections) and time.monotonic() > deadline:
                cells["W7"][system] = {"na": "n/a: skipped, over the bench's time budget"}
                continue
            if base["system"] == "cotrain":
                timeout = args.malicious_timeout if compared else max(args.timeout, 150.0)
                cells["W7"][system] = demo_job(base["transport"], base["suite"], timeout)
            else:
                launch = Launch(system, {**base, "parties": 3, "workloads": ["W7"], "device": device,
                                         "port": free_port()}, 3)
                run_together([launch], args.timeout, deadline)
                per_rank = launch.finish()
                cell = combine(per_rank, 3, "W7")
                cells["W7"][system] = cell if "wall_s" in cell or not launch.error else {"na": launch.error}
            print(f"  W7 {system}: {time.perf_counter() - t0:.0f} s", flush=True)
    # plaintext is measured first; list it first
    started_systems = [PLAIN] + [system for system, _ in secure + twins]
    cells = {name: {system: cells[name][system] for system in started_systems if system in cells[name]}
             for name in names}
    for name, measure in (("W8", lambda: custom_model_cells(max(args.timeout, 300.0))),
                          ("W9", lambda: sequence_step_cells(max(args.timeout, 600.0), deadline))):
        if name not in names:
            continue
        t0 = time.perf_counter()
        if time.monotonic() > deadline:
            cells[name]["cotrain"] = {"na": "n/a: skipped, over the bench's time budget"}
            continue
        cells[name].update(measure())
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)

    floors = {name: floor_for(name, cells[name], net) for name in names}
    results = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": args.device,
               "loopback": net, "cores": os.cpu_count(), "torch": torch.__version__, "cells": cells, "floors": floors,
               "total_s": time.perf_counter() - started}
    print()
    print(table(results))
    for system, section in sections.items():
        dealer_system = twin[system][0]
        if "W7" in names:
            section["W7"] = {dealer_system: cells["W7"].get(dealer_system, {}), system: cells["W7"].get(system, {})}
        results.setdefault("malicious", {})[system] = section
        print()
        print("\n".join(malicious_lines(section, system, dealer_system)))
    if "W9" in names:
        from bench.sequence_step import configuration, sequence_job

        print(f"W9 configuration (conf/job/sequence.yaml): {configuration(sequence_job())}")
        print(rounds_by_kind_line(cells["W9"]))
    if args.psi_ids and not cuda:
        results["psi"] = psi_section(args.psi_ids, deadline, args.timeout)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H%M%SZ')}{'-cuda' if cuda else ''}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
