"""The run's pictures and ``report.html``, written by the evaluator into ``outputs/<run id>/``.

ROC and precision-recall curves of the secure model (from the held-out scores the
evaluator received) beside the plaintext reference's, held-out loss and AUC per epoch (and
the privacy spent, under DP-SGD), and bytes and rounds per epoch, as PNG files, plus one
self-contained HTML page with the images embedded and the summary table.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from parties.summary import METRIC_TITLES, metric_names  # noqa: E402

SECURE_STYLE = {"color": "tab:blue", "label": "secure (MPC)"}
PLAIN_STYLE = {"color": "tab:orange", "label": "plaintext reference", "linestyle": "--"}


def _scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[Any, Any]:
    return labels.reshape(-1).double().numpy(), torch.sigmoid(logits.reshape(-1).double()).numpy()


def _curves(path: Path, curve: Any, title: str, xlabel: str, ylabel: str, runs: Sequence[tuple[dict, Any]],
            diagonal: bool) -> Path:
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for style, (truth, scores) in runs:
        x, y = curve(truth, scores)
        axes.plot(x, y, **style)
    if diagonal:
        axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
    axes.legend(loc="lower right" if diagonal else "upper right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _roc(truth: Any, scores: Any) -> tuple[Any, Any]:
    false_positive, true_positive, _ = roc_curve(truth, scores)
    return false_positive, true_positive


def _precision_recall(truth: Any, scores: Any) -> tuple[Any, Any]:
    precision, recall, _ = precision_recall_curve(truth, scores)
    return recall, precision


def _per_epoch(path: Path, summary: dict) -> Path:
    privacy = summary.get("privacy")
    curves = [("loss_curve", "held-out loss")] + ([("auc_curve", "held-out AUC")] if summary["task"] == "binary" else [])
    panels = len(curves) + bool(privacy)
    figure, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4), squeeze=False)
    axes = axes[0]
    for (key, title), axis in zip(curves, axes):
        for style, run in ((SECURE_STYLE, summary["secure"]), (PLAIN_STYLE, summary["plaintext"])):
            if run:
                values = run[key]
                axis.plot(range(1, len(values) + 1), values, marker="o", **style)
        axis.set(title=title, xlabel="epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend()
        axis.grid(alpha=0.3)
    if privacy:
        spent = privacy["epsilon_per_epoch"]
        axes[-1].plot(range(1, len(spent) + 1), spent, marker="o", color="tab:green", label="epsilon spent")
        axes[-1].axhline(privacy["epsilon_target"], color="tab:red", linestyle=":", label="budget")
        axes[-1].set(title=f"privacy (delta {privacy['delta']:g})", xlabel="epoch", ylim=(0, None))
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[-1].legend()
        axes[-1].grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _traffic(path: Path, summary: dict) -> Path:
    epochs = [record["epoch"] for record in summary["per_epoch"]]
    megabytes = [record["bytes_sent"] / 1e6 for record in summary["per_epoch"]]
    rounds = [record["rounds"] for record in summary["per_epoch"]]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.bar(epochs, megabytes, color="tab:blue", alpha=0.7, label="MB sent")
    axis.set(title="evaluator's traffic per epoch", xlabel="epoch", ylabel="MB sent")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    other = axis.twinx()
    other.plot(epochs, rounds, color="tab:red", marker="o", label="rounds")
    other.set_ylabel("rounds")
    other.set_ylim(bottom=0)
    figure.legend(loc="lower right", bbox_to_anchor=(0.86, 0.18))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _metric_cell(run: dict | None, key: str) -> str:
    return f"{run[key]:.4f}" if run else "n/a"


def _table(summary: dict) -> str:
    facts = [
        ("run", summary["run_id"]),
        ("parties", ", ".join(party["name"] for party in summary["parties"])),
        ("model", f"{summary['model']} ({summary['partition']} split), {summary['epochs']} epochs, "
                  f"batch {summary['batch_size']}, lr {summary['lr']}"),
        ("protocol", summary["protocol"] + (" (testing only)" if summary["testing_only_protocol"] else "")),
        ("transport", summary["transport"]),
        ("job wall time", f"{summary['job_wall_s']:.1f} s (training {summary['training_s']:.1f} s)"),
        ("per epoch (evaluator)", f"{summary['evaluator_bytes_per_epoch'] / 1e6:.2f} MB sent, "
                                  f"{summary['evaluator_rounds_per_epoch']:.0f} rounds"),
    ]
    if summary.get("privacy"):
        privacy = summary["privacy"]
        facts.append(("DP-SGD", f"epsilon {privacy['epsilon_spent']:.3f} of {privacy['epsilon_target']:g}, "
                                f"delta {privacy['delta']:g}, clip {privacy['clip']:g}, "
                                f"noise multiplier {privacy['noise_multiplier']:.3f}"))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    shown = summary["secure"] or summary["plaintext"]
    names = metric_names(shown) if shown else []
    metrics = "".join(
        f"<tr><th>{label}</th>" + "".join(f"<td>{_metric_cell(run, key)}</td>" for key in names)
        + "</tr>" for label, run in (("secure", summary["secure"]), ("plaintext", summary["plaintext"])))
    header = "".join(f"<th>{html.escape(METRIC_TITLES.get(name, name))}</th>" for name in names)
    return (f"<table>{rows}</table><h2>Held-out metrics</h2><table><tr><th></th>{header}</tr>{metrics}</table>")


def _page(summary: dict, images: Sequence[Path]) -> str:
    figures = "".join(
        f'<figure><img alt="{path.stem}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
        f"</figure>" for path in images)
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>cotrain run {html.escape(summary['run_id'])}</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
            "th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}img{max-width:100%}"
            "figure{display:inline-block;margin:0.5em}</style></head><body>"
            f"<h1>cotrain run {html.escape(summary['run_id'])}</h1>{_table(summary)}"
            f"<h2>Pictures</h2>{figures}</body></html>\n")


def write_report(run_dir: Path, summary: dict, secure_logits: torch.Tensor | None,
                 secure_labels: torch.Tensor | None, reference: Any | None) -> Path:
    """Write the PNG files and ``report.html`` into ``run_dir``; returns the page's path.

    ``reference`` is the plaintext reference (held-out logits and labels), if there is one.
    """
    runs = []
    if summary["task"] == "binary":  # ROC and precision-recall are binary pictures
        if secure_logits is not None and secure_labels is not None:
            runs.append((SECURE_STYLE, _scores(secure_logits, secure_labels)))
        if reference is not None:
            runs.append((PLAIN_STYLE, _scores(reference.heldout_logits, reference.heldout_labels)))
    images = []
    if runs:
        images.append(_curves(run_dir / "roc.png", _roc, "ROC (held-out)", "false positive rate",
                              "true positive rate", runs, diagonal=True))
        images.append(_curves(run_dir / "precision_recall.png", _precision_recall, "precision-recall (held-out)",
                              "recall", "precision", runs, diagonal=False))
    if summary["secure"] or summary["plaintext"]:
        images.append(_per_epoch(run_dir / "per_epoch.png", summary))
    images.append(_traffic(run_dir / "traffic.png", summary))
    page = run_dir / "report.html"
    page.write_text(_page(summary, images), encoding="utf-8")
    return page
