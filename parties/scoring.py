"""One party's side of secure scoring (``cotrain predict shares=...``): the parties of a finished
run load their own model shares, the row owner secret-shares its rows, and only the scores
are revealed, to the owner. The model and the rows stay secret.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from mpc import release
from mpc.data.tables import DataError, read_table
from mpc.models import encrypt_model
from mpc.scoring import MAC_KEY_FILE, SHARES_FILE, load_checked_shares, read_record, score_shared
from mpc.session import MpcSession
from parties.config import RunConfig
from parties.dealer import is_dealer, party_world, serve
from parties.devices import party_device
from parties.outputs import release_gate, write_predictions
from protocols import ProtocolSuite

log = logging.getLogger("cotrain.scoring")


def run_scoring(config: RunConfig, transport: Any, rank: int, directory: Path) -> dict | None:
    """Returns, at the owner, what was scored; ``directory`` is this party's folder of the run."""
    if is_dealer(config, rank):  # the suite's dealer serves tuples for the scoring as for training
        serve(config, transport, directory)
        return None
    names = config.names()
    owner = names.index(config.score.owner)
    group = party_world(config, transport)
    record = read_record(directory / "model.json")
    shares = torch.load(directory / SHARES_FILE, weights_only=True)
    key_file = directory / MAC_KEY_FILE  # protocol=malicious runs save one beside their shares
    saved_key = torch.load(key_file, weights_only=True) if key_file.is_file() else None
    rows = ids = None
    message: dict = {}
    if rank == owner:
        try:
            frame = read_table(config.score.data, names[rank])
            rows = record.preprocessing.transform(frame)
            ids = frame[record.preprocessing.id_column] if record.preprocessing.id_column in frame.columns else None
            message = {"rows": int(rows.shape[0])}
        except (DataError, ValueError) as error:
            log.error("cannot score %s: %s", config.score.data, error)  # the detail stays here
            message = {"error": f"{names[rank]}: the rows to score do not fit the model ({error.__class__.__name__}; "
                                "see its score.log)"}
    message = group.broadcast_obj(message if rank == owner else None, owner)  # the row count only
    if "error" in message:
        raise DataError(message["error"])
    device = party_device(config.device, rank)
    gate = release_gate(config, rank, directory)  # the scores' opening joins the run's audit chain
    with MpcSession(group, ProtocolSuite(config.protocol), device=device) as crypten, release.enforced(gate):
        secure_model = encrypt_model(crypten, record.torch_model(), record.input_width, device=device)
        load_checked_shares(crypten, secure_model, shares, saved_key, f"shares={config.score.shares}",
                            f"the model shares read back from {config.score.shares} were altered")
        logits = score_shared(crypten, secure_model, rows, (message["rows"], record.input_width), owner,
                              device)
    if rank != owner:
        log.info("scored %d rows of %s; the scores went to %s only", message["rows"], names[owner], names[owner])
        return None
    write_predictions(Path(config.score.out), logits, record.task, ids)
    log.info("scored %d rows; wrote %s", message["rows"], config.score.out)
    return {"rows": message["rows"], "out": config.score.out}
