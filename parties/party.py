"""One party process: who it is, its transport, and the secure training run it takes part in."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpc import release
from mpc.checkpoint import agree_on_resume, checkpoint_path, load_checkpoint, run_settings, save_checkpoint
from mpc.data.sequences import share_sequences
from mpc.data.sharing import share_horizontal, share_vertical
from mpc.losses import expected_outputs, task_loss
from mpc.pretrain import pretrain_on_file
from mpc.models import ModelError, build_torch_model, encrypt_model, model_target, output_width
from mpc.session import MpcSession
from mpc.shares import agree
from mpc.scoring import ModelRecord
from mpc.training import SIGMOID_MAX_ERROR, SecureTrainer
from parties.config import RunConfig
from parties.dealer import has_dealer, is_dealer, party_world, process_names, receive_dealer_report, run_dealer
from parties.hosts import check_host_boundary
from parties.devices import party_device
from parties.outputs import party_dir, process_usage, release_gate, save_model, write_json, write_predictions
from parties.scoring import run_scoring
from parties.report import write_report
from parties.summary import plaintext_reference, build_summary, failed_summary, print_summary
from parties.transport import PartyAddress, open_transport
from protocols import ProtocolSuite

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
    console.setFormatter(_OneLine(formatter._fmt))
    root.addHandler(console)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    logging.captureWarnings(True)


class _OneLine(logging.Formatter):
    """The console gets one line per record; tracebacks stay in the party's own log file."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None}))


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
    """Run this party's side of the whole job; raises on any failure, after recording why."""
    names = process_names(config)  # with the dealer's, where the suite has one (parties.dealer)
    name = names[rank]
    _configure_logging(config.log_level, rank, None)
    _tag_records(name)
    address = PartyAddress(rank=rank, world_size=len(names), names=names)
    transport = open_transport(address, config.transport)
    try:
        hosts = check_host_boundary(transport, config.transport)  # before any share is sent
        # every rank adopts rank 0's run id, so mpirun/torchrun/per-host runs share one folder
        run_id = transport.broadcast_obj(config.run_id or new_run_id() if rank == 0 else None, 0)
        directory = party_dir(config.output_dir, run_id, name)
        scoring = bool(config.score.shares)
        _configure_logging(config.log_level, rank, directory / ("score.log" if scoring else "party.log"))
        _tag_records(name)
        log.info("party %s (rank %d of %d) joined %s %s over %s on %d host%s", name, rank, config.num_parties,
                 "scoring with the shares of run" if scoring else "run", run_id, config.transport.name, hosts,
                 "s" if hosts > 1 else "")
        try:
            if scoring:
                return PartyOutcome(rank, name, directory, run_scoring(config, transport, rank, directory))
            return PartyOutcome(rank, name, directory, _run(config, transport, rank, run_id, directory))
        except Exception as error:
            _record_failure(config, rank, name, run_id, directory, error, write_files=not scoring)
            raise
    finally:
        transport.close()


def _record_failure(config: RunConfig, rank: int, name: str, run_id: str, directory: Path,
                    error: Exception, write_files: bool) -> None:
    """Say in this party's own log why it aborted (CheatDetected, a peer's failure, bad data,
    ...); leave party.json, and at rank 0 summary.json, with ``status: failed``."""
    reason = f"{error.__class__.__name__}: {error}"
    log.error("aborted: %s", reason, exc_info=True)
    if not write_files:
        return
    write_json(directory / "party.json", {"name": name, "rank": rank, "status": "failed", "reason": reason})
    if rank == 0:  # a local launch replaces it with every party's reason
        write_json(Path(config.output_dir) / run_id / "summary.json", failed_summary(run_id, f"{name}: {reason}"))


def _run(config: RunConfig, transport: Any, rank: int, run_id: str, directory: Path) -> dict | None:
    if is_dealer(config, rank):
        run_dealer(config, transport, directory)
        return None
    return _train(config, party_world(config, transport), rank, run_id, directory, transport)


def _train(config: RunConfig, transport: Any, rank: int, run_id: str, directory: Path,
           whole_world: Any) -> dict | None:
    """``transport``: the parties' own communicator; ``whole_world``: the transport, dealer included."""
    names = config.names()
    spec = config.parties[rank]
    suite = ProtocolSuite(config.protocol)
    started = time.perf_counter()
    device = party_device(config.device, rank)
    log.info("computing on %s", device)
    gate = release_gate(config, rank, directory)
    with MpcSession(transport, suite, device=device) as crypten, release.enforced(gate):
        if config.data.kind == "sequence":
            train, test, preprocessing = share_sequences(crypten, config.data, spec.data, spec.test_data or None,
                                                         names[rank], device, withheld=config.pretrain.owner,
                                                         psi=config.psi)
        elif config.data.partition == "horizontal":
            train, test, preprocessing = share_horizontal(crypten, config.data, spec.data, spec.test_data or None,
                                                          names[rank], device)
        else:
            train, test, preprocessing = share_vertical(crypten, config.data, spec.data, spec.test_data or None,
                                                        names[rank], device, psi=config.psi)
        settled = {"preprocessing": dataclasses.asdict(preprocessing), "rows": train.rows,
                   "positives": train.positive_count, "test_rows": test.rows if test is not None else 0}
        agree(train.features, "schema, row counts or scaling statistics", json.dumps(settled, sort_keys=True).encode())
        loss = task_loss(config.data.task, config.data.classes, train.rows, train.positive_count)
        width = len(train.feature_names)
        torch_model = build_torch_model(config.model, width, config.seed)
        if output_width(torch_model, width) != expected_outputs(config.data.task, config.data.classes):
            raise ModelError(f"model._target_={model_target(config.model)} gives {output_width(torch_model, width)} "
                             f"outputs per row on {width} features; data.task={config.data.task} needs "
                             f"{expected_outputs(config.data.task, config.data.classes)}")
        owner = config.pretrain.owner
        initial_model = torch_model  # the weights the secure run starts from: the seed's, or the owner's
        if owner is not None and rank == owner:
            log.info("pre-training the model in plaintext on this party's own rows (pretrain.owner)")
            initial_model = pretrain_on_file(torch_model, spec.data, names[rank], config.data, config.pretrain,
                                             config.seed)
        secure_model = encrypt_model(crypten, initial_model, width, owner=owner or 0, device=device)
        log.info("shared %d rows x %d features; training %s for %d epochs", train.rows, width,
                 model_target(config.model), config.train.epochs)
        training_start = time.perf_counter()
        trainer = SecureTrainer(crypten, secure_model, config.train, loss, config.seed,
                                transport.stats, show_progress=rank == config.train.evaluator)
        settings = run_settings(dataclasses.asdict(config))
        resume = None
        if config.train.resume:
            resume = load_checkpoint(config.train.resume, names[rank], rank, config.num_parties, settings,
                                     config.train.epochs)
            agree_on_resume(crypten, resume["epoch"], settings)
            log.info("resuming after epoch %d from this party's checkpoint in %s", resume["epoch"], config.train.resume)

        def checkpoint(record: Any) -> None:
            every = config.train.checkpoint_every
            if every and (record.epoch % every == 0 or record.epoch == config.train.epochs):
                save_checkpoint(checkpoint_path(directory.parent, names[rank]), names[rank], rank,
                                config.num_parties, settings, trainer.state_dict(record.epoch))

        history = trainer.fit(train, test, on_epoch=checkpoint, resume=resume)
        training_seconds = time.perf_counter() - training_start
        record = ModelRecord(dict(config.model), config.data.task, width, preprocessing,
                             config.protocol.name, list(names))
        saved = save_model(crypten, secure_model, torch_model, record, list(config.train.reveal_to), names, rank,
                           directory)
        party_report = {
            "name": names[rank],
            "rank": rank,
            "status": "ok",
            "contributed": train.contributed[rank],
            **transport.stats.as_dict(),
            "saved": saved,
            "protocol_parts": suite.counters(),
            "insecure_test_seed": suite.insecure_test_seed,
            **process_usage(),
        }
        reports = transport.gather_obj(party_report, config.train.evaluator)
    write_json(directory / "party.json", party_report)
    if rank != config.train.evaluator:
        return None
    if has_dealer(config):
        reports.append(receive_dealer_report(config, whole_world))
    if history and history[-1].heldout_logits is not None:
        write_predictions(directory / "heldout_predictions.csv", history[-1].heldout_logits, config.data.task)
    reference = plaintext_reference(config, initial_model, loss, preprocessing, SIGMOID_MAX_ERROR)
    summary = build_summary(config, run_id, suite, reports, history, loss, torch_model, preprocessing,
                            SIGMOID_MAX_ERROR, job_s=time.perf_counter() - started, training_s=training_seconds,
                            reference=reference)
    if trainer.private is not None:
        summary["privacy"] = trainer.private.report()
    if resume is not None:
        summary["resumed"] = {"from": config.train.resume, "after_epoch": resume["epoch"]}
    run_dir = Path(config.output_dir) / run_id
    summary["report"] = str(write_report(run_dir, summary, trainer.heldout_logits, trainer.heldout_labels, reference))
    write_json(run_dir / "summary.json", summary)
    print_summary(summary)
    return summary
