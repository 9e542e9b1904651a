"""One party process: who it is, its transport, and the secure training run it takes part in."""

from __future__ import annotations

import logging
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpc.data.sharing import share_horizontal, share_vertical
from mpc.losses import expected_outputs, task_loss
from mpc.models import ModelError, build_torch_model, encrypt_model, model_target, output_width
from mpc.session import MpcSession
from mpc.training import SecureTrainer
from parties.config import RunConfig
from parties.devices import party_device
from parties.outputs import party_dir, save_model, write_json
from parties.summary import build_summary, print_summary
from parties.transport import PartyAddress, open_transport
from parties.transport.group import PartyGroup
from protocols import ProtocolSuite
from protocols.dealer import DEALER_NAME, run_dealer_server
from protocols.suite import needs_dealer
from protocols.malicious.parts import is_malicious

log = logging.getLogger("cotrain.party")


@dataclass
class PartyOutcome:
    rank: int
    name: str
    directory: Path
    summary: dict | None  # the run summary, on the evaluator only


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _configure_logging(level: str, rank: int, log_file: Path | None) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level if rank == 0 else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(name)s [%(party)s] %(levelname)s %(message)s")
    console.setFormatter(formatter)
    root.addHandler(console)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    logging.captureWarnings(True)


class _PartyTag(logging.Filter):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name_tag = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.party = self.name_tag
        return True


def _tag_records(name: str) -> None:
    tag = _PartyTag(name)
    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


def run_party(config: RunConfig, rank: int) -> PartyOutcome:
    """Run this party's side of the whole job; raises on any failure."""
    # a suite with a dealer adds one process, rank num_parties, to the transport's world;
    # MPC runs among the parties only (a PartyGroup view of the transport)
    dealer = needs_dealer(config.protocol)
    names = config.names() + ((DEALER_NAME,) if dealer else ())
    name = names[rank]
    _configure_logging(config.log_level, rank, None)
    _tag_records(name)
    address = PartyAddress(rank=rank, world_size=len(names), names=names)
    transport = open_transport(address, config.transport)
    try:
        # every rank adopts rank 0's run id, so mpirun/torchrun/per-host runs share one folder
        run_id = transport.broadcast_obj(config.run_id or new_run_id() if rank == 0 else None, 0)
        directory = party_dir(config.output_dir, run_id, name)
        _configure_logging(config.log_level, rank, directory / "party.log")
        _tag_records(name)
        log.info("party %s (rank %d of %d) joined run %s over %s", name, rank, config.num_parties,
                 run_id, config.transport.name)
        if is_malicious(config.protocol):  # protocol=malicious: its own authenticated engine and dealer
            from parties.malicious_run import run_malicious

            return PartyOutcome(rank, name, directory, run_malicious(config, transport, rank, run_id, directory))
        if rank == config.num_parties:
            write_json(directory / "dealer.json", run_dealer_server(transport, config.num_parties))
            return PartyOutcome(rank, name, directory, None)
        mpc_transport = PartyGroup(transport, config.num_parties) if dealer else transport
        summary = _train(config, mpc_transport, rank, run_id, directory)
        return PartyOutcome(rank, name, directory, summary)
    finally:
        transport.close()


def _train(config: RunConfig, transport: Any, rank: int, run_id: str, directory: Path) -> dict | None:
    names = config.names()
    spec = config.parties[rank]
    suite = ProtocolSuite(config.protocol)
    started = time.perf_counter()
    device = party_device(config.device, rank)
    log.info("computing on %s", device)
    with MpcSession(transport, suite, device=device) as crypten:
        share = share_horizontal if config.data.partition == "horizontal" else share_vertical
        train, test, _ = share(crypten, config.data, spec.data, spec.test_data or None, names[rank], device)
        loss = task_loss(config.data.task, config.data.classes, train.rows, train.positive_count)
        features = len(train.feature_names)
        torch_model = build_torch_model(config.model, features, config.seed)
        if output_width(torch_model, features) != expected_outputs(config.data.task, config.data.classes):
            raise ModelError(f"model._target_={model_target(config.model)} gives {output_width(torch_model, features)} "
                             f"outputs per row on {features} features; data.task={config.data.task} needs "
                             f"{expected_outputs(config.data.task, config.data.classes)}")
        secure_model = encrypt_model(crypten, torch_model, features, device=device)
        log.info("shared %d rows x %d features; training %s for %d epochs", train.rows, features,
                 model_target(config.model), config.train.epochs)
        training_start = time.perf_counter()
        trainer = SecureTrainer(crypten, secure_model, config.train, loss, config.seed,
                                transport.stats, show_progress=rank == config.train.evaluator)
        history = trainer.fit(train, test)
        training_seconds = time.perf_counter() - training_start
        saved = save_model(crypten, secure_model, torch_model, list(config.train.reveal_to), names, rank, directory)
        party_report = {
            "name": names[rank],
            "rank": rank,
            "contributed": train.contributed[rank],
            **transport.stats.as_dict(),
            "saved": saved,
            "protocol_parts": suite.counters(),
        }
        reports = transport.gather_obj(party_report, config.train.evaluator)
    write_json(directory / "party.json", party_report)
    if rank != config.train.evaluator:
        return None
    summary = build_summary(config, run_id, suite, reports, history, loss, torch_model,
                            wall_s=time.perf_counter() - started, training_s=training_seconds)
    write_json(Path(config.output_dir) / run_id / "summary.json", summary)
    print_summary(summary)
    return summary
