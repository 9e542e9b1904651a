"""DP-SGD's cost in accuracy: the demo job's held-out metrics at several privacy budgets.

    .venv/bin/python bench/dp_table.py [--epsilons 1 3 8] [--repeats 1] [--protocol dealer] [-- overrides...]

Runs the demo job (3 banks, 2,000 training rows each, 3,000 held out, 5 epochs, batch 128,
logistic regression) once per ``train.dp.epsilon`` and once without DP, all with the same
seed, data and settings, and prints their held-out AUC, PR-AUC, accuracy and loss side by
side with the noise multiplier the accountant chose and the epsilon spent. The plaintext
reference (float, without DP) of the no-DP run is the last line. DP noise is drawn fresh in
every run: with ``--repeats k`` each epsilon runs k times and its line gives the mean and
the standard deviation over the k runs (the no-DP run has no noise and runs once).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from launch.api import train  # noqa: E402

METRICS = ("auc", "pr_auc", "accuracy", "loss")


def run_job(epsilon: float | None, protocol: str, output_dir: str, overrides: list[str]) -> dict:
    """One demo job's summary; ``epsilon`` None trains without DP."""
    settings = [f"protocol={protocol}", f"output_dir={output_dir}", *overrides]
    if epsilon is not None:
        settings.append(f"train.dp.epsilon={epsilon}")
    started = time.perf_counter()
    summary = train(overrides=settings)
    summary["bench_wall_s"] = time.perf_counter() - started
    return summary


def figure(values: list[float]) -> str:
    """One metric over the repeats: the value, or the mean and standard deviation."""
    if len(values) == 1:
        return f"{values[0]:>16.4f}"
    return f"{statistics.mean(values):>9.4f}±{statistics.stdev(values):.4f}"


def row(label: str, noise: str, spent: str, runs: list[dict], seconds: str) -> str:
    figures = "".join(figure([run[name] for run in runs]) for name in METRICS)
    return f"{label:<22}{noise:>8}{spent:>8}{figures}{seconds:>9}"


def table(epsilons: list[float], groups: list[list[dict]]) -> list[str]:
    header = f"{'':<22}{'noise':>8}{'spent':>8}" + "".join(f"{name:>16}" for name in METRICS) + f"{'wall s':>9}"
    lines = [header]
    for epsilon, summaries in zip([*epsilons, None], groups):
        privacy = summaries[0].get("privacy")
        label = f"epsilon {epsilon:g}" if epsilon is not None else "no DP"
        label += f" (x{len(summaries)})" if len(summaries) > 1 else ""
        noise = f"{privacy['noise_multiplier']:.3f}" if privacy else "-"
        spent = f"{max(s['privacy']['epsilon_spent'] for s in summaries):.3f}" if privacy else "-"
        seconds = f"{statistics.mean(s['bench_wall_s'] for s in summaries):.0f}"
        lines.append(row(label, noise, spent, [s["secure"] for s in summaries], seconds))
    if groups[-1][0].get("plaintext"):
        lines.append(row("no DP, plaintext float", "-", "-", [groups[-1][0]["plaintext"]], "-"))
    return lines


def main(argv: list[str] | None = None) -> list[list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per epsilon (fresh noise each)")
    parser.add_argument("--protocol", default="dealer", help="protocol suite of every run (default: dealer)")
    parser.add_argument("overrides", nargs="*", help="further cotrain run settings for every run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as output_dir:
        groups = [[run_job(epsilon, args.protocol, output_dir, args.overrides)
                   for _ in range(args.repeats if epsilon is not None else 1)]
                  for epsilon in [*args.epsilons, None]]
    plain = groups[-1][0]
    delta = groups[0][0]["privacy"]["delta"]
    print(f"DP-SGD, demo job ({plain['num_parties']} parties, {plain['epochs']} epochs, batch {plain['batch_size']}, "
          f"protocol={args.protocol}, delta {delta:g}); held-out metrics of the secure model:")
    print("\n".join(table(args.epsilons, groups)), flush=True)
    return groups


if __name__ == "__main__":
    main()
