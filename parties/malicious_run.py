"""One party's side of a ``protocol=malicious`` run: its table in, the authenticated engine
(``protocols.malicious``), its outputs and the summary out.

The dealer is rank ``num_parties`` (the launcher starts it, as for ``protocol=dealer``).
Any failed malicious-security check raises ``CheatDetected`` on every party: the party
exits non-zero and nothing of the run is saved (the outputs are written only after the
final check has passed).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpc.data.sharing import read_and_announce
from mpc.data.preprocessing import Preprocessing
from mpc.data.schema import check_horizontal
from mpc.metrics import ClassWeights, evaluate
from mpc.losses import WeightedBinaryCrossEntropy
from mpc.models import build_torch_model, model_target
from mpc.training import EpochRecord
from parties.config import RunConfig
from parties.dealer import dealer_rank, party_world, receive_dealer_report
from mpc.scoring import ModelRecord, save_model_file
from parties.outputs import atomic_save, write_json, write_predictions
from parties.summary import build_summary, print_summary
from protocols import ProtocolSuite
from protocols.malicious.engine import Engine
from protocols.malicious.train import (SIGMOID_FIXED_POINT_ERROR, SIGMOID_MAX_ERROR, LocalData,
                                       MaliciousTrainConfig, UnsupportedModel, check_model, layers_from_torch,
                                       train_logreg)

log = logging.getLogger("cotrain.malicious")


_BUILT_IN = {"mpc.zoo.LogisticRegression": "logreg", "mpc.zoo.MLP": "mlp"}  # the engine's names


def config_problem(config: RunConfig) -> str | None:
    """Why this engine cannot run ``config`` (None: it can); checked before any party starts."""
    target = model_target(config.model)
    try:
        check_model(_BUILT_IN.get(target, target))
    except UnsupportedModel as error:
        return str(error)
    if config.data.task != "binary":
        return f"protocol=malicious trains data.task=binary only, not {config.data.task}"
    plain_sgd = (config.train.optimizer, config.train.momentum, config.train.weight_decay, config.train.schedule)
    if plain_sgd != ("sgd", 0.0, 0.0, "constant"):
        return ("protocol=malicious trains with train.optimizer=sgd at a constant rate, "
                "without momentum or weight decay")
    if config.data.partition != "horizontal":
        return "protocol=malicious supports data.partition=horizontal only (for now)"
    return None


def run_malicious(config: RunConfig, transport: Any, rank: int, run_id: str, directory: Path) -> dict | None:
    """A party trains (the dealer runs ``parties.dealer``). Returns the summary at the evaluator."""
    parties = config.num_parties
    started = time.perf_counter()
    names = config.names()
    spec = config.parties[rank]
    group = party_world(config, transport)
    frame, metas = read_and_announce(group, spec.data, names[rank], True, config.data)
    features = list(check_horizontal(metas, config.data.label, config.data.id_column))
    evaluator = config.train.evaluator
    test_x = test_y = None
    if rank == evaluator and spec.test_data:
        test_frame, _ = read_and_announce(group, spec.test_data, names[rank], False, config.data)
        test_x, test_y = test_frame[features].to_numpy(np.float64), test_frame[config.data.label].to_numpy(np.float64)
    else:
        read_and_announce(group, None, names[rank], False, config.data)
    torch_model = build_torch_model(config.model, len(features), config.seed)
    initial = layers_from_torch(torch_model)
    train_config = MaliciousTrainConfig(epochs=config.train.epochs, batch_size=config.train.batch_size,
                                        lr=config.train.lr, seed=config.seed, evaluator=evaluator,
                                        reveal_to=[names.index(name) for name in config.train.reveal_to])
    history: list[EpochRecord] = []
    weights_holder: dict[str, ClassWeights] = {}

    def on_epoch(record: Any) -> None:
        metrics = None
        if record.test_logits is not None:
            metrics = evaluate(torch.tensor(record.test_logits, dtype=torch.float32),
                               torch.tensor(test_y, dtype=torch.float32).reshape(-1, 1), weights_holder["w"])
            log.info("epoch %d: held-out AUC %.4f, loss %.4f", record.epoch, metrics.auc, metrics.loss)
        logits = None if record.test_logits is None else torch.tensor(record.test_logits, dtype=torch.float64)
        history.append(EpochRecord(record.epoch, record.seconds, record.bytes_sent, 0, record.rounds, metrics, logits))

    engine = Engine(transport, parties, dealer=dealer_rank(config))
    try:
        local = LocalData(frame[features].to_numpy(np.float64), frame[config.data.label].to_numpy(np.float64),
                          test_x, test_y)
        # the class weights are known once the pooled positive count is revealed (inside training)
        result = _train(engine, local, initial, train_config, on_epoch, weights_holder)
    finally:
        engine.close()
    training_seconds = result.seconds
    # the statistics the run revealed: the plaintext reference and the model file use them
    preprocessing = Preprocessing(features, [float(v) for v in result.mean], [float(v) for v in result.std],
                                  config.data.label, config.data.id_column)
    record = ModelRecord(dict(config.model), config.data.task, len(features), preprocessing,
                         config.protocol.name, list(names))
    # every check has passed: only now is anything written
    saved = _save(result, torch_model, record, directory, rank)
    report = {"name": names[rank], "rank": rank, "status": "ok",
              "contributed": {"rows": len(frame), "columns": len(features)},
              **transport.stats.as_dict(), "saved": saved,
              "protocol_parts": {"engine": result.stats},
              "insecure_test_seed": False}  # this engine draws from the OS CSPRNG only
    reports = group.gather_obj(report, evaluator)
    write_json(directory / "party.json", report)
    if rank != evaluator:
        return None
    reports.append(receive_dealer_report(config, transport))
    if history and history[-1].heldout_logits is not None:
        write_predictions(directory / "heldout_predictions.csv", history[-1].heldout_logits, config.data.task)
    summary = build_summary(config, run_id, ProtocolSuite(config.protocol), reports, history,
                            WeightedBinaryCrossEntropy(weights_holder["w"]), torch_model, preprocessing,
                            SIGMOID_MAX_ERROR + SIGMOID_FIXED_POINT_ERROR, job_s=time.perf_counter() - started,
                            training_s=training_seconds)
    write_json(Path(config.output_dir) / run_id / "summary.json", summary)
    print_summary(summary)
    return summary


def _train(engine: Engine, local: LocalData, initial: np.ndarray, config: MaliciousTrainConfig,
           on_epoch: Any, holder: dict) -> Any:
    def hook(record: Any) -> None:
        if "w" not in holder:
            holder["w"] = ClassWeights.balanced(engine_state["rows"], engine_state["positives"])
        on_epoch(record)

    engine_state: dict[str, int] = {}

    def scaled(rows: int, positives: int) -> None:
        engine_state.update(rows=rows, positives=positives)

    result = train_logreg(engine, local, initial, config, on_epoch=hook, on_scaling=scaled)
    if "w" not in holder:
        holder["w"] = ClassWeights.balanced(result.rows, result.positives)
    return result


def _save(result: Any, torch_model: torch.nn.Module, record: ModelRecord, directory: Path, rank: int) -> dict:
    layers = result.weights if isinstance(result.weights, list) else [result.weights]
    shares = {}
    for index, layer in enumerate(layers):
        shares.update({f"layer{index}_value_lo": layer.v.lo, f"layer{index}_value_hi": layer.v.hi,
                       f"layer{index}_mac_lo": layer.m.lo, f"layer{index}_mac_hi": layer.m.hi})
    atomic_save(lambda p: np.savez(p.open("wb"), **shares), directory / "model_shares.npz")
    saved = {"shares": str(directory / "model_shares.npz")}
    if result.revealed is not None:
        plain = np.asarray(result.revealed, np.float64)
        state, offset = {}, 0
        linears = [(name, module) for name, module in torch_model.named_children() if hasattr(module, "weight")]
        for (name, module), layer in zip(linears, layers):
            rows, cols = layer.shape
            matrix = plain[offset:offset + rows * cols].reshape(rows, cols)
            offset += rows * cols
            state[f"{name}.weight"] = torch.tensor(matrix[:-1].T.copy(), dtype=torch.float32)
            state[f"{name}.bias"] = torch.tensor(matrix[-1].copy(), dtype=torch.float32)
        expected = torch_model.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
            raise RuntimeError("the revealed parameters do not match the torch model's layout")
        atomic_save(lambda p: save_model_file(p, record, state), directory / "model.pt")
        saved["revealed"] = str(directory / "model.pt")
    return saved
