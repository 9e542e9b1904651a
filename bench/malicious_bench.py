"""The cost of protocol=malicious against the semi-honest dealer suite, same job, same trainer.

    .venv/bin/python bench/malicious_bench.py                        # 3 banks x 2000 rows, logreg, 5 epochs
    .venv/bin/python bench/malicious_bench.py --epochs 1 --rows 500 --model mlp --repeat 1

Runs the same training (demo bank data, horizontal split, a dealer process, gloo) through the
launcher with ``protocol=dealer`` (CrypTen's MPCTensor, semi-honest) and ``protocol=malicious``
(SPDZ2k-authenticated shares through the same SecureTrainer: MAC-carrying values mod 2^128,
every dealt tuple checked, every opening MAC-checked before a reveal), alternating, ``--repeat``
times each (the machine is shared: the fastest run of each and the median are shown). Prints
training time, party 0's bytes and rounds and the held-out AUC, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SUITES = ("dealer", "malicious")


def _run(suite: str, arguments: argparse.Namespace, directory: Path, index: int) -> dict:
    from launch.cli import run

    run_id = f"{suite}-{index}"
    code = run([f"output_dir={directory}", f"run_id={run_id}", f"num_parties={arguments.parties}",
                f"protocol={suite}", "transport=gloo", f"model={arguments.model}", f"data.rows={arguments.rows}",
                f"data.test_rows={arguments.test_rows}", f"train.epochs={arguments.epochs}",
                f"train.batch_size={arguments.batch}", "launch.timeout_s=3600"])
    if code != 0:
        raise SystemExit(f"the {suite} run failed (exit {code}); see {directory / run_id}")
    summary = json.loads((directory / run_id / "summary.json").read_text())
    party0 = summary["per_party"][0]
    return {"train_seconds": summary["training_s"], "bytes_sent": party0["bytes_sent"],
            "bytes_received": party0["bytes_received"], "rounds": party0["rounds"],
            "auc": summary["secure"]["auc"], "plain_auc": summary["plaintext"]["auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parties", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--test-rows", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--model", default="logreg", help="logreg or mlp")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each suite; the fastest is shown")
    arguments = parser.parse_args()

    runs: dict[str, list[dict]] = {suite: [] for suite in SUITES}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(arguments.repeat):  # alternate the order: the machine is shared and noisy
            for suite in (SUITES if repeat % 2 == 0 else SUITES[::-1]):
                value = _run(suite, arguments, Path(scratch), repeat)
                runs[suite].append(value)
                print(f"  {suite} run {repeat + 1}: training {value['train_seconds']:.2f} s", flush=True)
    best = {}
    for suite, values in runs.items():  # the fastest run of each (least disturbed); all runs printed above
        best[suite] = min(values, key=lambda v: v["train_seconds"])
        best[suite]["median"] = float(np.median([v["train_seconds"] for v in values]))

    print(f"\n{arguments.model}, {arguments.parties} parties x {arguments.rows} rows, {arguments.epochs} epochs, "
          f"batch {arguments.batch} (party 0's view; gloo; shared CPU cores)")
    header = f"{'suite':<11}{'train s':>9}{'median':>9}{'sent MB':>10}{'recv MB':>10}{'rounds':>9}{'AUC':>8}{'plain':>8}"
    print(header)
    print("-" * len(header))
    for suite, r in best.items():
        print(f"{suite:<11}{r['train_seconds']:>9.2f}{r['median']:>9.2f}{r['bytes_sent'] / 1e6:>10.2f}"
              f"{r['bytes_received'] / 1e6:>10.2f}{r['rounds']:>9}{r['auc']:>8.4f}{r['plain_auc']:>8.4f}")
    honest, malicious = best["dealer"], best["malicious"]
    print(f"\nmalicious / dealer: training time x{malicious['train_seconds'] / honest['train_seconds']:.2f} "
          f"best-of-{arguments.repeat} (x{malicious['median'] / honest['median']:.2f} median; target <= 3), "
          f"bytes sent x{malicious['bytes_sent'] / honest['bytes_sent']:.2f}, "
          f"rounds x{malicious['rounds'] / honest['rounds']:.2f}")


if __name__ == "__main__":
    main()
