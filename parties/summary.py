"""The run summary: machine-readable ``summary.json`` and the lines a person reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from mpc.data.preprocessing import Preprocessing
from mpc.losses import Loss
from mpc.models import model_kind
from mpc.reference import pool_horizontal, pool_sequences, pool_vertical, readable, train_plaintext
from mpc.tolerance import (METRICS, compare, fine_tuning_tolerances, logit_bounds, metric_tolerances, out_of_tolerance,
                            training_weight_bound)
from mpc.training import EpochRecord
from parties.config import RunConfig
from protocols import ProtocolSuite
from protocols.registry import part_class
from protocols.truncation import TruncationError

@dataclass
class Reference:
    """The plaintext reference's held-out results and how far the secure ones may lie from them."""

    metrics: dict
    logit_bound: float | None  # the largest over the held-out rows; None: no bound for this model
    tolerances: dict[str, float] | None
    heldout_logits: torch.Tensor | None = None  # the float model's final held-out scores, for the report
    heldout_labels: torch.Tensor | None = None


def _with_curves(final: dict, curve: Sequence[dict]) -> dict:
    """The final metrics with the loss curve (and the AUC curve, for a binary task)."""
    curves = {"loss_curve": [m["loss"] for m in curve]}
    if "auc" in final:
        curves["auc_curve"] = [m["auc"] for m in curve]
    return {**final, **curves}


def metric_names(metrics: dict) -> list[str]:
    """The task's metrics in a metrics record (its curves left out)."""
    return [key for key in metrics if not key.endswith("_curve")]


def plaintext_reference(config: RunConfig, torch_model: nn.Module, loss: Loss,
                        preprocessing: Preprocessing, sigmoid_error: float) -> Reference | None:
    """Train the same model in float on the pooled files, where this process can read them all,
    with the preprocessing the secure run revealed; derive the metric tolerances (mpc.tolerance)
    where they are known: a binary logistic regression (or a short MLP run) trained by plain SGD."""
    train_paths = [spec.data for spec in config.parties]
    test_paths = [spec.test_data for spec in config.parties]
    if not config.train.plaintext_reference or not readable(train_paths):
        return None
    if config.data.kind == "sequence" and config.data.partition == "horizontal":
        data = pool_sequences(config.data, train_paths, test_paths, config.pretrain.owner)
    elif config.data.partition == "horizontal":
        data = pool_horizontal(config.data, preprocessing, train_paths, test_paths)
    else:
        data = pool_vertical(config.data, preprocessing, train_paths, test_paths, intersect=config.psi.enabled)
    if data.test_features is None:
        return None
    trained, curve = train_plaintext(torch_model, data, config.train, loss, config.seed)
    metrics = _with_curves(curve[-1].as_dict(), [m.as_dict() for m in curve])
    with torch.no_grad():
        plain_logits = trained(data.test_features)
    # DP-SGD's joint noise is known to no party, and psi.reveal=size's row order (the
    # blinded values') to no process, so the float run cannot replay either: no bound. (The
    # order changes nothing where every step takes every row.)
    order_unknown = _blinded_row_order(config) and config.train.batch_size < data.features.shape[0]
    # a transformer has no derived training bound: it is held to the AUC's (fine_tuning_tolerances)
    if config.data.kind == "sequence" and loss.task == "binary" and not order_unknown:
        delta, tolerances = fine_tuning_tolerances(plain_logits, data.test_labels, loss.weights)
        return Reference(metrics, delta, tolerances, plain_logits, data.test_labels)
    truncation = truncation_error(config)
    if (config.train.dp.enabled or order_unknown or truncation is None
            or not (loss.task == "binary" and _plain_sgd(config.train))):
        return Reference(metrics, None, None, plain_logits, data.test_labels)
    training = training_weight_bound(data.features, data.labels, torch_model, config.train, loss.weights,
                                     config.seed, sigmoid_error, truncation)
    if training is None:
        return Reference(metrics, None, None, plain_logits, data.test_labels)
    delta = logit_bounds(data.test_features, trained, training)
    return Reference(metrics, delta.max().item(), metric_tolerances(plain_logits, data.test_labels, loss.weights, delta),
                     plain_logits, data.test_labels)


def truncation_error(config: RunConfig) -> TruncationError | None:
    """How far the run's truncation part says one truncation may err; None for a part that
    says nothing (a plugged-in one without ``error_bound``): then no bound is derived."""
    error_bound = getattr(part_class("truncation", config.protocol.truncation), "error_bound", None)
    return None if error_bound is None else error_bound(config.num_parties)


def _blinded_row_order(config: RunConfig) -> bool:
    """The secure rows come in the order of the ids' blinded values (psi.reveal=size), which
    the plaintext reference, joining on the ids in the clear, sorts by id instead."""
    return config.psi.enabled and config.psi.reveal == "size"


def _plain_sgd(train: Any) -> bool:
    """The derived tolerances follow plain SGD's steps (mpc.tolerance)."""
    return (train.optimizer == "sgd" and train.momentum == 0 and train.weight_decay == 0
            and train.schedule == "constant")


def build_summary(config: RunConfig, run_id: str, suite: ProtocolSuite, reports: Sequence[dict],
                  history: Sequence[EpochRecord], loss: Loss, torch_model: nn.Module,
                  preprocessing: Preprocessing, sigmoid_error: float, job_s: float, training_s: float,
                  reference: Reference | None = None) -> dict:
    """``reference``: the plaintext reference where the caller trained it already (else trained here)."""
    final = history[-1].metrics if history and history[-1].metrics else None
    secure = None
    if final is not None:
        secure = _with_curves(final.as_dict(), [r.metrics.as_dict() for r in history])
    if reference is None:
        reference = plaintext_reference(config, torch_model, loss, preprocessing, sigmoid_error)
    plaintext = None if reference is None else reference.metrics
    epochs = max(len(history), 1)
    return {
        "status": "ok",
        "run_id": run_id,
        "num_parties": config.num_parties,
        "parties": [{"name": r["name"], "rank": r["rank"], **r["contributed"]} for r in reports if "contributed" in r],
        "transport": config.transport.name,
        "protocol": config.protocol.name,
        "protocol_parts": suite.describe(),
        "testing_only_protocol": suite.testing_only,
        # parties whose PRG seeds came from COTRAIN_INSECURE_TEST_SEED (tests only): empty in real runs
        "insecure_test_seed": [r["name"] for r in reports if r.get("insecure_test_seed")],
        "model": model_kind(config.model),
        "task": config.data.task,
        "partition": config.data.partition,
        "psi_reveal": config.psi.reveal if config.psi.enabled else None,
        "epochs": config.train.epochs,
        "batch_size": config.train.batch_size,
        "lr": config.train.lr,
        "seed": config.seed,
        "preprocessing": preprocessing.as_dict(),
        "class_weights": ({"negative": loss.weights.negative, "positive": loss.weights.positive}
                          if loss.task == "binary" else None),
        "secure": secure,
        "plaintext": plaintext,
        # secure - plaintext per metric, with the tolerance derived in mpc.tolerance (None: not derived)
        "gaps": None if not (secure and plaintext) else compare(secure, plaintext, reference.tolerances,
                                                                metric_names(secure)),
        "logit_bound": None if reference is None else reference.logit_bound,
        # the largest |secure - plaintext| held-out output, where the evaluator has both
        "logit_gap": _largest_gap(history, reference),
        "job_wall_s": job_s,
        "training_s": training_s,
        "per_epoch": [r.as_dict() for r in history],
        "per_party": [
            {
                "name": r["name"],
                "bytes_sent": r["bytes_sent"],
                "bytes_received": r["bytes_received"],
                "rounds": r["rounds"],
                "comm_seconds": r["seconds"],
                "peak_rss_bytes": r.get("peak_rss_bytes"),  # None from an engine that does not measure them
                "cpu_s": r.get("cpu_s"),
                "threads": r.get("threads"),
                "protocol_parts": r["protocol_parts"],
                "saved": r["saved"],
            }
            for r in reports
        ],
        "total_bytes_sent": sum(r["bytes_sent"] for r in reports),
        "evaluator_bytes_per_epoch": sum(r.bytes_sent for r in history) / epochs,
        "evaluator_rounds_per_epoch": sum(r.rounds for r in history) / epochs,
        # the evaluator's bytes sent + received per training row per epoch, by phase of the step
        "evaluator_bytes_per_row": phase_bytes_per_row(history, _training_rows(config, reports)),
    }


def _training_rows(config: RunConfig, reports: Sequence[dict]) -> int:
    """Rows trained on: the parties' rows added up (horizontal) or any party's (vertical)."""
    rows = [r["contributed"]["rows"] for r in reports if "contributed" in r]
    return (sum(rows) if config.data.partition == "horizontal" else max(rows)) if rows else 0


def phase_bytes_per_row(history: Sequence[EpochRecord], rows: int) -> dict[str, float]:
    """Each phase's bytes (sent + received) per training row, averaged over the epochs."""
    totals: dict[str, float] = {}
    for record in history:
        for phase, counted in record.phases.items():
            totals[phase] = totals.get(phase, 0.0) + counted["bytes"]
    return {phase: total / (max(len(history), 1) * max(rows, 1)) for phase, total in totals.items()}


def _largest_gap(history: Sequence[EpochRecord], reference: Reference | None) -> float | None:
    secure = history[-1].heldout_logits if history else None
    if secure is None or reference is None or reference.heldout_logits is None:
        return None
    return float((secure.double() - reference.heldout_logits.double()).abs().max().item())


def _metric_line(label: str, metrics: dict | None, fmt: str = "{:9.4f}") -> str:
    if metrics is None:
        return f"    {label:<22} (not available)"
    return f"    {label:<22}" + "".join(f"{fmt.format(value):>11}" for value in metrics.values())


def _gap_lines(summary: dict) -> list[str]:
    gaps = summary["gaps"]
    if gaps is None:
        return []
    lines = [_metric_line("gap (secure - plain)", {m: entry["gap"] for m, entry in gaps.items()}, "{:+9.4f}")]
    if summary["logit_bound"] is None:
        if summary.get("privacy"):
            reason = "the secure run adds DP noise the plaintext reference cannot replay"
        elif summary.get("psi_reveal") == "size":
            reason = ("psi.reveal=size: the secure rows come in the blinded ids' order, the plaintext "
                      "reference's in id order, so their batches differ")
        else:
            reason = (f"model={summary['model']}, task={summary['task']} "
                      "(mpc/tolerance.py: binary logistic regression with plain SGD only)")
        lines.append(f"    no tolerance derived: {reason}")
        return lines
    lines.append(_metric_line("tolerance", {m: entry["tolerance"] for m, entry in gaps.items()}))
    failing = [f"{m} (gap {gaps[m]['gap']:+.4f}, allowed {gaps[m]['tolerance']:.4f})" for m in out_of_tolerance(gaps)]
    measured = summary.get("logit_gap")
    if measured is not None and measured > summary["logit_bound"]:
        failing.append(f"held-out logits (largest gap {measured:.2e}, allowed {summary['logit_bound']:.2e})")
    if failing:
        lines.append("  !!! OUT OF TOLERANCE: " + ", ".join(failing) + " -- the secure model is not the plaintext one")
    else:
        lines.append(f"  all four metrics within the fixed-point tolerance "
                     f"(held-out logits within {summary['logit_bound']:.2e} of plaintext at most"
                     + (f"; largest gap {measured:.2e})" if measured is not None else ")"))
    return lines


def _only(metrics: dict | None, names: Sequence[str]) -> dict | None:
    return None if metrics is None else {name: metrics[name] for name in names}


METRIC_TITLES = {"auc": "AUC", "pr_auc": "PR-AUC", "macro_f1": "macro-F1", "rmse": "RMSE", "r2": "R^2"}


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
    if summary["insecure_test_seed"]:
        lines.append(f"  WARNING: COTRAIN_INSECURE_TEST_SEED made the PRG seeds of {', '.join(summary['insecure_test_seed'])} "
                     "predictable (tests only): every secret of this run is predictable")
    shown = summary["secure"] or summary["plaintext"]
    names = metric_names(shown) if shown else list(METRICS)
    header = "".join(f"{METRIC_TITLES.get(name, name):>11}" for name in names)
    lines.append(f"  held-out metrics:{'':9}{header}")
    lines.append(_metric_line("secure", _only(summary["secure"], names)))
    lines.append(_metric_line("plaintext", _only(summary["plaintext"], names)))
    lines += _gap_lines(summary)
    lines.append(f"  job wall time {summary['job_wall_s']:.1f} s (training {summary['training_s']:.1f} s)")
    for party in summary["per_party"]:
        lines.append(f"  {party['name']:<8} sent {party['bytes_sent'] / 1e6:8.2f} MB  received "
                     f"{party['bytes_received'] / 1e6:8.2f} MB  rounds {party['rounds']}")
    lines.append(f"  total    sent {summary['total_bytes_sent'] / 1e6:8.2f} MB")
    lines.append(f"  evaluator per epoch: {summary['evaluator_bytes_per_epoch'] / 1e6:.2f} MB sent, "
                 f"{summary['evaluator_rounds_per_epoch']:.0f} rounds")
    per_row = summary.get("evaluator_bytes_per_row")
    if per_row:
        lines.append(f"  evaluator bytes per training row per epoch (sent + received): {sum(per_row.values()):.0f} ("
                     + ", ".join(f"{phase.replace('_', ' ')} {value:.0f}" for phase, value in per_row.items()) + ")")
    parts = summary["per_party"][0]["protocol_parts"] if summary["per_party"] else {}
    if parts:
        lines.append(f"  protocol parts at {summary['per_party'][0]['name']} (offline | online):")
    for kind, counted in parts.items():
        lines.append(f"    {kind:<14} {_part_line(counted)}")
    print("\n".join(lines), flush=True)


def failed_summary(run_id: str, reason: str, parties: dict[str, str] | None = None) -> dict:
    """What a failed run leaves: ``status: failed``, the reason, and each party's own reason
    where the writer can read it (a local launch reads every party's folder)."""
    return {"status": "failed", "run_id": run_id, "reason": reason, "party_reasons": parties or {}}
