"""The run summary: machine-readable ``summary.json`` and the lines a person reads."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from torch import nn

from mpc.losses import Loss
from mpc.models import model_target
from mpc.reference import pool_horizontal, pool_vertical, readable, train_plaintext
from mpc.training import EpochRecord
from parties.config import RunConfig
from protocols import ProtocolSuite

log = logging.getLogger("cotrain.summary")


def _with_curves(final: dict, curve: Sequence[dict]) -> dict:
    """The final metrics with the loss curve (and the AUC curve, for a binary task)."""
    curves = {"loss_curve": [m["loss"] for m in curve]}
    if "auc" in final:
        curves["auc_curve"] = [m["auc"] for m in curve]
    return {**final, **curves}


def plaintext_reference(config: RunConfig, torch_model: nn.Module, loss: Loss) -> dict | None:
    """Train the same model in float on the pooled files, where this process can read them all."""
    train_paths = [spec.data for spec in config.parties]
    test_paths = [spec.test_data for spec in config.parties]
    if not config.train.plaintext_reference or not readable(train_paths):
        return None
    pool = pool_horizontal if config.data.partition == "horizontal" else pool_vertical
    data = pool(config.data, train_paths, test_paths)
    if data.test_features is None:
        return None
    _, curve = train_plaintext(torch_model, data, config.train, loss, config.seed)
    return _with_curves(curve[-1].as_dict(), [m.as_dict() for m in curve])


def build_summary(config: RunConfig, run_id: str, suite: ProtocolSuite, reports: Sequence[dict],
                  history: Sequence[EpochRecord], loss: Loss, torch_model: nn.Module,
                  wall_s: float, training_s: float) -> dict:
    final = history[-1].metrics if history and history[-1].metrics else None
    secure = None
    if final is not None:
        secure = _with_curves(final.as_dict(), [r.metrics.as_dict() for r in history])
    plaintext = plaintext_reference(config, torch_model, loss)
    epochs = max(len(history), 1)
    return {
        "run_id": run_id,
        "num_parties": config.num_parties,
        "parties": [{"name": r["name"], "rank": r["rank"], **r["contributed"]} for r in reports],
        "transport": config.transport.name,
        "protocol": config.protocol.name,
        "protocol_parts": suite.describe(),
        "testing_only_protocol": suite.testing_only,
        "model": model_target(config.model),
        "task": config.data.task,
        "partition": config.data.partition,
        "epochs": config.train.epochs,
        "batch_size": config.train.batch_size,
        "lr": config.train.lr,
        "seed": config.seed,
        "class_weights": ({"negative": loss.weights.negative, "positive": loss.weights.positive}
                          if loss.task == "binary" else None),
        "secure": secure,
        "plaintext": plaintext,
        "auc_gap": None if not (secure and plaintext and "auc" in secure) else abs(secure["auc"] - plaintext["auc"]),
        "wall_s": wall_s,
        "training_s": training_s,
        "per_epoch": [r.as_dict() for r in history],
        "per_party": [
            {
                "name": r["name"],
                "bytes_sent": r["bytes_sent"],
                "bytes_received": r["bytes_received"],
                "rounds": r["rounds"],
                "comm_seconds": r["seconds"],
                "protocol_parts": r["protocol_parts"],
                "saved": r["saved"],
            }
            for r in reports
        ],
        "evaluator_bytes_per_epoch": sum(r.bytes_sent for r in history) / epochs,
        "evaluator_rounds_per_epoch": sum(r.rounds for r in history) / epochs,
    }


def _metric_line(label: str, metrics: dict | None) -> str:
    if metrics is None:
        return f"  {label:<10} (not available)"
    shown = [(key, value) for key, value in metrics.items() if not key.endswith("_curve")]
    return f"  {label:<10} " + "   ".join(f"{_METRIC_NAMES.get(key, key)} {value:.4f}" for key, value in shown)


_METRIC_NAMES = {"auc": "AUC", "pr_auc": "PR-AUC", "macro_f1": "macro-F1", "rmse": "RMSE", "r2": "R^2"}


_PART_FIELDS = ("calls", "tuples", "offline_bytes", "offline_rounds", "online_bytes", "online_rounds")


def _part_line(counted: dict) -> str:
    if not all(field in counted for field in _PART_FIELDS):  # an engine with counters of its own
        return "  ".join(f"{key} {value}" for key, value in counted.items())
    return (f"{counted['calls']:>8} calls {counted['tuples']:>11} elements   "
            f"{counted['offline_bytes'] / 1e6:8.2f} MB {counted['offline_rounds']:>6} rounds | "
            f"{counted['online_bytes'] / 1e6:8.2f} MB {counted['online_rounds']:>6} rounds")


def print_summary(summary: dict) -> None:
    lines = [
        "",
        f"cotrain run {summary['run_id']}: {summary['num_parties']} parties, {summary['model']} "
        f"({summary['partition']}), {summary['epochs']} epochs over {summary['transport']} "
        f"with protocol {summary['protocol']}",
    ]
    if summary["testing_only_protocol"]:
        lines.append("  WARNING: this protocol is for testing only (a trusted party sees every triple)")
    lines.append("  held-out metrics:")
    lines.append(_metric_line("secure", summary["secure"]))
    lines.append(_metric_line("plaintext", summary["plaintext"]))
    if summary["auc_gap"] is not None:
        lines.append(f"  AUC gap secure vs plaintext: {summary['auc_gap']:.4f}")
    lines.append(f"  wall time {summary['wall_s']:.1f} s (training {summary['training_s']:.1f} s)")
    for party in summary["per_party"]:
        lines.append(f"  {party['name']:<8} sent {party['bytes_sent'] / 1e6:8.2f} MB  received "
                     f"{party['bytes_received'] / 1e6:8.2f} MB  rounds {party['rounds']}")
    lines.append(f"  evaluator per epoch: {summary['evaluator_bytes_per_epoch'] / 1e6:.2f} MB sent, "
                 f"{summary['evaluator_rounds_per_epoch']:.0f} rounds")
    parts = summary["per_party"][0]["protocol_parts"] if summary["per_party"] else {}
    if parts:
        lines.append(f"  protocol parts at {summary['per_party'][0]['name']} (offline | online):")
    for kind, counted in parts.items():
        lines.append(f"    {kind:<14} {_part_line(counted)}")
    print("\n".join(lines), flush=True)
