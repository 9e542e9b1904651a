"""DP-SGD's cost in accuracy: the demo job's held-out metrics at several privacy budgets.

    .venv/bin/python bench/dp_table.py [--epsilons 1 3 8] [--protocol dealer] [-- overrides...]

Runs the demo job (3 banks, 2,000 training rows each, 3,000 held out, 5 epochs, batch 128,
logistic regression) once per ``train.dp.epsilon`` and once without DP, all with the same
seed, data and settings, and prints their held-out AUC, PR-AUC, accuracy and loss side by
side with the noise multiplier the accountant chose and the epsilon spent. The plaintext
reference (float, without DP) of the no-DP run is the last line. DP noise is drawn fresh in
every run, so each DP line is one sample: rerun for the spread.
"""

from __future__ import annotations

import argparse
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


def row(label: str, noise: str, spent: str, metrics: dict, seconds: str) -> str:
    figures = "".join(f"{metrics[name]:>10.4f}" for name in METRICS)
    return f"{label:<22}{noise:>8}{spent:>8}{figures}{seconds:>9}"


def table(epsilons: list[float], summaries: list[dict]) -> list[str]:
    header = f"{'':<22}{'noise':>8}{'spent':>8}" + "".join(f"{name:>10}" for name in METRICS) + f"{'wall s':>9}"
    lines = [header]
    for epsilon, summary in zip([*epsilons, None], summaries):
        privacy = summary.get("privacy")
        label = f"epsilon {epsilon:g}" if epsilon is not None else "no DP"
        noise = f"{privacy['noise_multiplier']:.3f}" if privacy else "-"
        spent = f"{privacy['epsilon_spent']:.3f}" if privacy else "-"
        lines.append(row(label, noise, spent, summary["secure"], f"{summary['bench_wall_s']:.0f}"))
    if summaries[-1].get("plaintext"):
        lines.append(row("no DP, plaintext float", "-", "-", summaries[-1]["plaintext"], "-"))
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--protocol", default="dealer", help="protocol suite of every run (default: dealer)")
    parser.add_argument("overrides", nargs="*", help="further cotrain run settings for every run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as output_dir:
        summaries = [run_job(epsilon, args.protocol, output_dir, args.overrides)
                     for epsilon in [*args.epsilons, None]]
    delta = summaries[0].get("privacy", {}).get("delta")
    print(f"DP-SGD, demo job ({summaries[-1]['num_parties']} parties, {summaries[-1]['epochs']} epochs, "
          f"batch {summaries[-1]['batch_size']}, protocol={args.protocol}, delta {delta:g}); held-out metrics "
          "of the secure model:")
    print("\n".join(table(args.epsilons, summaries)), flush=True)
    return summaries


if __name__ == "__main__":
    main()
