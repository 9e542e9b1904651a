"""``cotrain predict``: score raw rows with a trained model.

* ``cotrain predict model=<model.pt> data=<csv> out=<csv>`` scores in plaintext with a revealed
  model file (a party named in ``train.reveal_to`` has one).
* ``cotrain predict shares=outputs/<run id> data=<csv> owner=<party> out=<csv> [overrides]``
  starts the run's parties again on this machine (the local launcher); each loads its own
  shares, the owner secret-shares its rows, and only the scores are revealed, to the owner.
  The run's protocol suite is used unless an override (``protocol=...``) says otherwise; a
  ``protocol=malicious`` run's MAC-carrying shares are MAC-checked as they are loaded, under
  the MAC key its dealer kept, and the scores revealed through the engine's checked reveal.

Both apply the preprocessing the run revealed, so a row gets the score the run's held-out
metrics were computed from (within the fixed-point bound of ``mpc.tolerance``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from launch.config import ConfigError, load_config
from launch.local import launch_local
from mpc.data.tables import DataError, read_table
from mpc.release import ReleasePolicy, ReleaseRefused
from mpc.scoring import ModelRecord, load_model_file, read_record, score_plain
from parties.config import PartySpec, ScoreConfig
from parties.outputs import write_predictions
from protocols.malicious.parts import is_malicious
from protocols.suite import testing_only_parts

SETTINGS = ("model", "shares", "data", "owner", "out")


def _split(arguments: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    settings, overrides = {}, []
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if key in SETTINGS and equals:
            settings[key] = value
        else:
            overrides.append(argument)
    return settings, overrides


def _require(settings: dict[str, str], *keys: str) -> None:
    missing = [key for key in keys if not settings.get(key)]
    if missing:
        raise ConfigError(f"cotrain predict needs {', '.join(f'{key}=...' for key in missing)}")


def predict(arguments: Sequence[str]) -> int:
    settings, overrides = _split(arguments)
    if settings.get("model") and settings.get("shares"):
        raise ConfigError("cotrain predict: give model=<model.pt> (plaintext) or shares=outputs/<run id> "
                          "(secure), not both")
    if settings.get("model"):
        if overrides:
            raise ConfigError(f"cotrain predict model=...: unknown setting {overrides[0]!r} "
                              "(allowed: model, data, out)")
        _require(settings, "data", "out")
        return _predict_plain(settings)
    _require(settings, "shares", "data", "owner", "out")
    return _predict_shared(settings, overrides)


def _predict_plain(settings: dict[str, str]) -> int:
    model, record = load_model_file(settings["model"])
    frame = read_table(settings["data"], "predict")
    try:
        logits = score_plain(model, record.preprocessing, frame)
    except ValueError as error:  # a column the model needs is missing, or a token outside its vocabulary
        raise DataError(f"data={settings['data']}: {error}") from None
    id_column = record.preprocessing.id_column
    write_predictions(Path(settings["out"]), logits, record.task,
                      frame[id_column] if id_column in frame.columns else None)
    print(f"cotrain predict: scored {len(logits)} rows with {settings['model']}; wrote {settings['out']}")
    return 0


def _run_record(shares: Path) -> ModelRecord:
    if not shares.is_dir():
        raise ConfigError(f"shares={shares}: no such run folder (expected outputs/<run id>)")
    records = sorted(shares.glob("*/model.json"))
    if not records:
        raise ConfigError(f"shares={shares}: no party folder holds model.json; was the run trained by this version?")
    return read_record(records[0])


def _predict_shared(settings: dict[str, str], overrides: list[str]) -> int:
    shares = Path(settings["shares"]).resolve()
    record = _run_record(shares)
    if settings["owner"] not in record.parties:
        raise ConfigError(f"owner={settings['owner']} is not a party of the run ({', '.join(record.parties)})")
    given_protocol = any(o.partition("=")[0].lstrip("+~") == "protocol" for o in overrides)
    config = load_config([*([] if given_protocol else [f"protocol={record.protocol}"]),
                          f"num_parties={len(record.parties)}", *overrides])
    authenticated = record.protocol == "malicious"
    if is_malicious(config.protocol) != authenticated:  # the two kinds of share are not interchangeable
        raise ConfigError(f"shares={shares}: the run saved {'MAC-carrying' if authenticated else 'plain'} shares "
                          f"(protocol={record.protocol}); score them under "
                          f"{'protocol=malicious' if authenticated else 'a suite without MACs'}, not "
                          f"protocol={config.protocol.name}")
    score = ScoreConfig(shares=str(shares), data=str(Path(settings["data"]).resolve()), owner=settings["owner"],
                        out=str(Path(settings["out"]).resolve()))
    insecure = testing_only_parts(config.protocol)
    if insecure and not config.protocol.allow_insecure:  # the owner's rows are its own data
        raise ConfigError(f"protocol.{insecure[0]} is for testing only (a trusted party can see every secret) and "
                          "is refused for scoring a party's rows; give protocol=dealer, or set "
                          "protocol.allow_insecure=true to accept that")
    config = dataclasses.replace(config, parties=[PartySpec(name=name) for name in record.parties],
                                 output_dir=str(shares.parent), run_id=shares.name, score=score)
    try:  # refused here, before any party starts, as the engine's gate would refuse it
        ReleasePolicy(config.release, record.parties, config.train.evaluator, config.train.reveal_to,
                      score_owner=score.owner).check("scores", [score.owner])
    except (ValueError, ReleaseRefused) as error:
        raise ConfigError(f"release: {error}") from None
    launch_local(config)
    print(f"cotrain predict: the parties of run {shares.name} scored {settings['owner']}'s rows under MPC; "
          f"{settings['owner']} wrote {settings['out']}")
    return 0
