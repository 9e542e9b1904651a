"""Where a training epoch's time goes, round by round, per party (not part of ``make bench``).

``python -m bench.round_profile --workload W6 --suites tfp,dealer [--transport gloo]``
launches each suite's two parties (and its dealer) over zmq (or gloo), runs the workload's epoch twice (the first traces the
step, the second is what every later epoch costs) and prints, for the second, per party:
its rounds by what they carry (the operation whose opening they are, found on the call
stack: a product's Beaver opening, a truncation, a comparison's opening, AND levels or B2A,
a dealer request), how many per step, the bytes each sends, and the time between one
round's end and the next split three ways: compute (outside the communicator), encode
(inside it, not waiting: copies, headers, sums) and wait (for the peer's message; over gloo,
which waits inside its blocking calls, all the time inside the communicator).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

# (label, file suffix, function name): the innermost match on the stack names the round
_MARKERS = (
    ("dealer request", "protocols/dealer.py", "_receive_batch"),
    ("dealer late part", "protocols/dealer.py", "take_late"),
    ("dealer request (sent)", "protocols/dealer_wire.py", "request"),
    ("truncation", "protocols/truncation.py", "_divide"),
    ("comparison bit opening (B2A)", "protocols/comparison.py", "open_bits"),
    ("comparison AND", "protocols/comparison.py", "carry_out"),
    ("comparison AND", "protocols/carry4.py", "carry4_products"),
    ("comparison opening", "protocols/comparison.py", "_sign"),
    ("ReLU opening", "protocols/comparison.py", "relu_shares"),
    ("ReLU gradient", "protocols/comparison.py", "relu_gradient_shares"),
    ("product opening", "protocols/crypten_hooks.py", "beaver"),
    ("product opening", "protocols/crypten_hooks.py", "matmuls_together"),
    ("product opening", "crypten/mpc/primitives/beaver.py", "__beaver_protocol"),
    ("product opening", "crypten/mpc/primitives/beaver.py", "square"),
)
# the phase of the step, from the innermost matching frame (forward where none matches)
_PHASES = (("update", "mpc/optim.py", "step"), ("update", "mpc/training.py", "_scale_gradients"),
           ("loss gradient", "mpc/losses.py", "output_gradient"), ("backward", "", "backward"))


def _label(frame: Any) -> str:
    operation, phase = None, None
    while frame is not None and phase is None:
        code = frame.f_code
        if operation is None:
            operation = next((label for label, path, function in _MARKERS
                              if code.co_name == function and code.co_filename.endswith(path)), None)
        phase = next((label for label, path, function in _PHASES
                      if code.co_name == function and path in code.co_filename), None)
        frame = frame.f_back
    return f"{phase or 'forward'}: {operation or 'other'}"


def watch_rounds(stats: Any, on_change: Callable[[Any, int], None]) -> None:
    """Call ``on_change(frame, change)`` at every later change of ``stats.rounds`` (a
    :class:`parties.transport.stats.CommStats`), ``frame`` the code that made it: ``stats``
    gets a subclass whose ``rounds`` is a property, the value kept as before."""
    base = type(stats)

    class Watched(base):  # type: ignore[misc, valid-type]
        @property
        def rounds(self) -> int:
            return self.__dict__["rounds"]

        @rounds.setter
        def rounds(self, value: int) -> None:
            change = value - self.__dict__.get("rounds", 0)
            self.__dict__["rounds"] = value
            if change:
                on_change(sys._getframe(1), change)

    stats.__class__ = Watched


class RoundProfiler:
    """Hooks one transport: every round it counts is recorded with its label, the bytes sent,
    and the compute, encode and wait seconds since the previous one ended."""

    def __init__(self, transport: Any) -> None:
        self.events: list[tuple[str, float, float, float, int]] = []
        self._starts: list[tuple] = []  # the counters as each recorded round began
        self._wait = 0.0
        self._last = (time.perf_counter(), 0.0, 0.0, 0)  # time, comm seconds, wait seconds, bytes
        stats = transport.stats
        profiler = self
        recv_frame = getattr(transport, "_recv_frame", None)
        # gloo (and mpi) wait inside the library's blocking calls, copies and all: there every
        # second inside the communicator counts as wait, none as encode
        self._waits_inside = recv_frame is None

        def timed_recv(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return recv_frame(*args, **kwargs)
            finally:
                profiler._wait += time.perf_counter() - start

        if recv_frame is not None:
            transport._recv_frame = timed_recv

        def counted(frame: Any, change: int) -> None:
            if change > 0:
                profiler._record(frame, change)
            else:  # a collective of several messages (PartyGroup) is one round
                profiler._merge(frame, 1 - change)

        watch_rounds(stats, counted)
        self.stats = stats

    def _merge(self, frame: Any, count: int) -> None:
        """The last ``count`` rounds recorded were the messages of one collective that ends now."""
        if count > len(self._starts):
            return
        self._last = self._starts[-count]
        del self.events[-count:], self._starts[-count:]
        self._record(frame, 1)

    def _record(self, frame: Any, change: int) -> None:
        self._starts.append(self._last)
        now = time.perf_counter()
        then, comm0, wait0, sent0 = self._last
        comm, wait, sent = self.stats.seconds, self._wait, self.stats.bytes_sent
        # the group's collectives count their round after their messages: stats.seconds is
        # already up to date here; the point-to-point one adds its seconds after the count
        # (the difference is one call's bookkeeping)
        interval, in_comm = now - then, comm - comm0
        waited = in_comm if self._waits_inside else wait - wait0
        self.events.append((_label(frame), interval, max(in_comm - waited, 0.0), waited, sent - sent0))
        self._last = (now, comm, wait, sent)
        for _ in range(change - 1):
            self.events.append((self.events[-1][0], 0.0, 0.0, 0.0, 0))
            self._starts.append(self._last)

    def take(self) -> list[tuple]:
        events, self.events, self._starts = self.events, [], []
        self._last = (time.perf_counter(), self.stats.seconds, self._wait, self.stats.bytes_sent)
        return events


def summarize(events: list[list], steps: int) -> list[str]:
    """One line per label: rounds per step, KB sent per step, and seconds per epoch of
    compute, encode and wait."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0])
    for label, interval, encode, wait, sent in events:
        entry = totals[label]
        entry[0] += 1
        entry[1] += max(interval - encode - wait, 0.0)
        entry[2] += encode
        entry[3] += wait
        entry[4] += sent
    lines = [f"  {'round carries':<34}{'per step':>9}{'KB/step':>9}{'compute s':>11}{'encode s':>10}{'wait s':>9}"]
    for label, (count, compute, encode, wait, sent) in sorted(totals.items(), key=lambda item: -sum(item[1][1:4])):
        lines.append(f"  {label:<34}{count / steps:>9.1f}{sent / steps / 1e3:>9.1f}{compute:>11.3f}{encode:>10.3f}{wait:>9.3f}")
    count = sum(t[0] for t in totals.values())
    sums = [sum(t[i] for t in totals.values()) for i in range(1, 5)]
    lines.append(f"  {'all':<34}{count / steps:>9.1f}{sums[3] / steps / 1e3:>9.1f}{sums[0]:>11.3f}{sums[1]:>10.3f}{sums[2]:>9.3f}")
    return lines


def step_sequence(events: list[list], per_step: int) -> str:
    """The labels of one step's rounds in order, runs of one label joined (``label x n``)."""
    runs: list[list] = []
    for label, *_ in events[-per_step:]:
        if runs and runs[-1][0] == label:
            runs[-1][1] += 1
        else:
            runs.append([label, 1])
    return "\n".join(f"    {label} x {count}" if count > 1 else f"    {label}" for label, count in runs)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from bench.run import Launch, launch_spec, protocol_suites, run_together
    from bench.workloads import BATCH, SIZES

    parser = argparse.ArgumentParser(prog="bench.round_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="W6", choices=("W1", "W2a", "W2b", "W5", "W6"))
    parser.add_argument("--suites", default="tfp,dealer")
    parser.add_argument("--transport", default="zmq")
    parser.add_argument("--sequence", action="store_true", help="also print one step's rounds in order")
    parser.add_argument("--first", action="store_true",
                        help="the first run instead (the one `python -m bench --repeats 1` times: a traced first step)")
    args = parser.parse_args(argv)
    suites = protocol_suites()
    steps = SIZES[args.workload] // BATCH if args.workload in ("W5", "W6") else 1  # W1, W2: one product
    for suite in args.suites.split(","):
        base = {"system": "cotrain", "transport": args.transport, "protocol": suites[suite], "suite": suite}
        spec, world = launch_spec(base, [args.workload], None)
        spec.update(repeats={args.workload: 2}, round_profile=True)
        launch = Launch(f"cotrain-{args.transport}-{suite}", spec, world)
        run_together([launch], 600, time.monotonic() + 1200)
        per_rank = launch.finish()
        if launch.error:
            print(f"{launch.name}: {launch.error}")
            continue
        for rank in range(2):
            result = per_rank[rank]
            if "results" not in result:
                print(f"{launch.name} rank {rank}: {result.get('error')}")
                continue
            sample = result["results"][args.workload]["samples"][0 if args.first else -1]
            print(f"{launch.name} {args.workload}, party {rank}, {'first' if args.first else 'second'} epoch: wall {sample['wall']:.2f} s, "
                  f"cpu {sample['cpu']:.2f} s, {sample['rounds']} rounds, {sample['bytes'] / 1e6:.1f} MB sent")
            print("\n".join(summarize(sample["round_profile"], steps)))
            if args.sequence and rank == 0:
                print("  one step's rounds, in order:")
                print(step_sequence(sample["round_profile"], len(sample["round_profile"]) // steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
