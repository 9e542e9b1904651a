"""Reading the run's Hydra config and turning every bad value into a one-line error."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mpc.data.config import KINDS, PARTITIONS
from mpc.dp import config_problem as dp_problem
from mpc.losses import TASKS, expected_outputs
from mpc.optim import ADAM_MIN_EPS, OPTIMIZERS, SCHEDULES
from mpc.psi.config import REVEAL_MODES
from mpc.models import PLACEHOLDER_FEATURES, ModelError, build_torch_model, model_kind, output_width
from mpc.release import ReleasePolicy, ReleaseRefused, required_openings
from parties.config import PartySpec, RunConfig
from parties.dealer import has_dealer, process_names, world_size
from parties.transport import transport_names
from protocols.prg import InsecureSeedRefused, insecure_test_seed
from protocols.registry import part_class
from protocols.malicious.dealer import MAX_ELEMENTS as MAX_ANSWER_ELEMENTS
from protocols.suite import check_party_count, check_parts_fit, testing_only_parts

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("transport", "protocol", "model", "data", "train", "launch", "job")
MIN_PARTIES, MAX_PARTIES = 2, 5
LAUNCH_MODES = ("local", "mpirun", "torchrun", "host")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting is wrong; the message names it and what is allowed."""


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def _check_group_choices(overrides: Sequence[str]) -> None:
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in GROUPS and value and value not in group_options(key.lstrip("+~")):
            raise ConfigError(f"{key}={value} is not available; choose one of {', '.join(group_options(key))}")


# settings whose keys the YAML cannot list: the model's arguments, and maps keyed by party name
_OPEN_KEYS = ("model.", "transport.peers", "transport.public_keys")


def _open_keys_may_be_new(overrides: Sequence[str]) -> list[str]:
    """``model.hidden=64`` adds an argument the model's YAML does not list, and
    ``transport.peers={bank0: ...}`` party names its empty map does not (Hydra's ``++``)."""
    return [f"++{o}" if o.startswith(_OPEN_KEYS) else o for o in overrides]


def load_config(overrides: Sequence[str] = ()) -> RunConfig:
    """Compose ``conf/config.yaml`` with command-line overrides into a checked RunConfig."""
    _check_group_choices(overrides)
    overrides = _open_keys_may_be_new(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = compose(config_name="config", overrides=list(overrides))
        if OmegaConf.is_missing(composed.model, "_target_"):
            raise ConfigError("model=custom needs the model class by import path: model._target_=my_module.MyNet")
        typed = OmegaConf.merge(OmegaConf.structured(RunConfig), composed)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_one_line(error)) from None
    config: RunConfig = OmegaConf.to_object(typed)
    validate(config)
    return config


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    key = getattr(error, "full_key", None)
    message = text[0] if text else error.__class__.__name__
    return f"invalid setting {key}: {message}" if key else message


def validate(config: RunConfig) -> None:
    """Check every setting against every other; raises ConfigError naming the first bad one.
    Runs before any party starts (and again when a launcher changes the party count)."""

    def require(condition: bool, message: str) -> None:
        if not condition:
            raise ConfigError(message)

    require(MIN_PARTIES <= config.num_parties <= MAX_PARTIES,
            f"num_parties={config.num_parties} is out of range; allowed values are {MIN_PARTIES}..{MAX_PARTIES}")
    require(config.data.task in TASKS, f"data.task={config.data.task} is not a task; choose one of {', '.join(TASKS)}")
    require(config.data.task != "multiclass" or config.data.classes >= 2,
            f"data.classes={config.data.classes}: a multiclass task needs at least 2 classes")
    _check_sequences(config)
    _check_model(config)
    _check_optimizer(config.train)
    require(config.data.partition in PARTITIONS,
            f"data.partition={config.data.partition} is not allowed; choose one of {', '.join(PARTITIONS)}")
    require(config.data.rows >= 10, f"data.rows={config.data.rows} is too small; it must be at least 10")
    require(0 < config.data.overlap <= 1, f"data.overlap={config.data.overlap} must be in (0, 1]")
    require(config.data.overlap == 1 or config.data.partition == "vertical",
            f"data.overlap={config.data.overlap} applies to data.partition=vertical only")
    require(config.data.overlap == 1 or config.psi.enabled,
            f"data.overlap={config.data.overlap} gives the parties different ids in different orders; "
            "set psi.enabled=true to align them by private set intersection")
    require(not config.psi.enabled or config.data.partition == "vertical",
            "psi.enabled=true applies to data.partition=vertical (a horizontal split has no common ids to find)")
    require(config.psi.min_intersection >= 1, f"psi.min_intersection={config.psi.min_intersection} must be at least 1")
    require(config.psi.reveal in REVEAL_MODES,
            f"psi.reveal={config.psi.reveal} is not a mode; choose one of {', '.join(REVEAL_MODES)}")
    require(config.data.test_rows >= 10, f"data.test_rows={config.data.test_rows} is too small; it must be at least 10")
    require(config.train.epochs >= 1, f"train.epochs={config.train.epochs} must be at least 1")
    require(config.train.batch_size >= 1, f"train.batch_size={config.train.batch_size} must be at least 1")
    require(0 < config.train.lr <= 10, f"train.lr={config.train.lr} must be in (0, 10]")
    require(0 <= config.train.evaluator < config.num_parties,
            f"train.evaluator={config.train.evaluator} is not a party rank (0..{config.num_parties - 1})")
    require(config.transport.name in transport_names(),
            f"transport.name={config.transport.name} is unknown; choose one of {', '.join(transport_names())}")
    require(re.fullmatch(r"cpu|cuda(:\d+)?", config.device) is not None,
            f"device={config.device}: use cpu, cuda (one GPU per party) or cuda:<index>")
    require(config.log_level in LOG_LEVELS,
            f"log_level={config.log_level} is unknown; choose one of {', '.join(LOG_LEVELS)}")
    require(config.launch.mode in LAUNCH_MODES,
            f"launch.mode={config.launch.mode} is unknown; choose one of {', '.join(LAUNCH_MODES)}")
    require(config.data.partition != "vertical" or 0 <= config.data.label_party < config.num_parties,
            f"data.label_party={config.data.label_party} is not a party rank (0..{config.num_parties - 1})")
    require(config.transport.timeout_s > 0 and config.transport.connect_timeout_s > 0,
            "transport.timeout_s and transport.connect_timeout_s must be positive")
    require(config.transport.max_message_bytes > 0, f"transport.max_message_bytes={config.transport.max_message_bytes} "
            "must be positive (every message is refused otherwise)")
    require(config.transport.heartbeat_s > 0 and config.transport.heartbeat_timeout_s > 0
            and config.transport.connect_retry_s > 0,
            "transport.heartbeat_s, transport.heartbeat_timeout_s and transport.connect_retry_s must be positive")
    if config.parties:
        require(len(config.parties) == config.num_parties,
                f"parties lists {len(config.parties)} parties but num_parties={config.num_parties}")
        names = [spec.name for spec in config.parties]
        require(all(names) and len(set(names)) == len(names), f"parties: every party needs a unique name, got {names}")
    try:
        check_party_count(config.protocol, config.num_parties)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _refuse_insecure(config)
    dealer = has_dealer(config)
    source = config.protocol.triple_source
    require(not dealer or callable(getattr(part_class("triple_source", source), "make_dealer", None)),
            f"protocol.triple_source={source} needs a dealer process but gives no make_dealer for it to run")
    try:
        check_parts_fit(config.protocol)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    require(1 <= config.protocol.answer_elements <= MAX_ANSWER_ELEMENTS,
            f"protocol.answer_elements={config.protocol.answer_elements} must be in 1..{MAX_ANSWER_ELEMENTS} "
            "(the most elements one dealer answer may deal)")
    rank = config.party.rank
    require(rank is None or 0 <= rank < world_size(config),
            f"party.rank={rank} is not a party rank (0..{world_size(config) - 1}"
            f"{', the last being the dealer' if dealer else ''})")
    _check_peer_addresses(config)
    dp_error = dp_problem(config.train.dp, model_kind(config.model))
    require(dp_error is None, dp_error or "")
    require(not config.train.dp.enabled or config.data.task == "binary",
            f"train.dp needs data.task=binary (its clipped gradient is the logistic loss's); data.task={config.data.task}")
    plain_sgd = (config.train.optimizer == "sgd" and config.train.momentum == 0 and config.train.weight_decay == 0
                 and config.train.schedule == "constant")
    require(not config.train.dp.enabled or plain_sgd,
            "train.dp needs plain SGD (train.optimizer=sgd, momentum=0, weight_decay=0, schedule=constant): "
            "its noise is calibrated to one clipped update per step")
    _check_checkpoints(config)
    _validate_release(config)


def _check_sequences(config: RunConfig) -> None:
    """Sequence tables (data.kind=sequence) and pre-training by one party (pretrain.*)."""
    data, pretrain = config.data, config.pretrain
    if data.kind not in KINDS:
        raise ConfigError(f"data.kind={data.kind} is not allowed; choose one of {', '.join(KINDS)}")
    if data.kind == "sequence":
        if data.partition == "vertical" and pretrain.enabled:
            raise ConfigError(f"pretrain.owner={pretrain.owner} needs data.partition=horizontal: in a vertical split "
                              "no party holds whole sequences of customers of its own to pre-train on; set "
                              "pretrain.owner=null to train the model from its initial weights")
        if data.length < 1 or not data.vocabulary or min(data.vocabulary.values()) < 1:
            raise ConfigError(f"data.kind=sequence needs data.length >= 1 and data.vocabulary mapping each token "
                              f"field to its size >= 1 (got length {data.length}, vocabulary {dict(data.vocabulary)})")
    if not pretrain.enabled:
        return
    if data.kind != "sequence":
        raise ConfigError("pretrain.owner applies to data.kind=sequence (job=sequence)")
    if pretrain.owner != config.train.evaluator:
        raise ConfigError(f"pretrain.owner={pretrain.owner} must be the evaluator (train.evaluator="
                          f"{config.train.evaluator}): the owner holds the held-out rows and the plaintext reference")
    if pretrain.epochs < 1 or pretrain.batch_size < 1 or not 0 < pretrain.lr <= 10 or pretrain.optimizer not in OPTIMIZERS:
        raise ConfigError(f"pretrain.epochs and pretrain.batch_size must be at least 1, pretrain.lr in (0, 10] and "
                          f"pretrain.optimizer one of {', '.join(OPTIMIZERS)}")


def _validate_release(config: RunConfig) -> None:
    """The release policy names known values and parties, and allows what this job opens."""
    names = config.names() or tuple(spec.name for spec in default_party_specs(config.num_parties))
    unknown = [name for name in config.train.reveal_to if name not in names]
    if unknown:
        raise ConfigError(f"train.reveal_to names {unknown[0]!r}, which is not a party ({', '.join(names)})")
    try:
        policy = ReleasePolicy(config.release, names, config.train.evaluator, config.train.reveal_to)
        has_heldout = not config.parties or any(spec.test_data for spec in config.parties)
        for what, recipients in required_openings(config.data.partition, has_heldout, config.train.reveal_to,
                                                  names[config.train.evaluator], names):
            policy.check(what, recipients)
    except (ValueError, ReleaseRefused) as error:
        raise ConfigError(f"release: {error}") from None


def _check_peer_addresses(config: RunConfig) -> None:
    """Where parties are started elsewhere (one command per host, a launcher), zmq reads every
    party's address from transport.peers when it is given (a local launch picks its own)."""
    if config.transport.name != "zmq" or (config.party.rank is None and config.launch.mode == "local"):
        return
    named = config if config.parties else replace(config, parties=default_party_specs(config.num_parties))
    names = process_names(named)
    missing = [name for name in names if name not in config.transport.peers]
    if config.transport.peers and missing:
        raise ConfigError(f"transport.peers has no address for {', '.join(missing)}")


def _check_checkpoints(config: RunConfig) -> None:
    train = config.train
    if train.checkpoint_every < 0:
        raise ConfigError(f"train.checkpoint_every={train.checkpoint_every} must be 0 (never) or a number of epochs")
    if not (train.checkpoint_every or train.resume):
        return
    if train.resume and not Path(train.resume).is_dir():
        raise ConfigError(f"train.resume={train.resume} is not a folder; give a run folder, outputs/<run id>")


def _refuse_insecure(config: RunConfig) -> None:
    """The parties' own data never meets a testing-only part without protocol.allow_insecure=true,
    and the test suite's predictable PRG seeds are refused outside the test suite."""
    try:
        insecure_test_seed()
    except InsecureSeedRefused as error:
        raise ConfigError(str(error)) from None
    user_data = any(spec.data or spec.test_data for spec in config.parties)
    insecure = testing_only_parts(config.protocol)
    if user_data and insecure and not config.protocol.allow_insecure:
        raise ConfigError(f"protocol.{insecure[0]} is for testing only (a trusted party can see every secret) and is refused "
                          "with the parties' own data files; use protocol=dealer, ot or malicious, or set "
                          "protocol.allow_insecure=true to accept that")


def _check_model(config: RunConfig) -> None:
    """Build the model once here, so a bad class, argument, layer or output width stops the run
    before any party starts (the parties build it again with the agreed feature count)."""
    features = PLACEHOLDER_FEATURES
    if config.data.kind == "sequence":  # the one-hot width is known before any table is read
        features = config.data.length * sum(config.data.vocabulary.values())
    try:
        model = build_torch_model(config.model, features, config.seed)
        width, wanted = output_width(model, features), expected_outputs(config.data.task, config.data.classes)
    except ModelError as error:
        raise ConfigError(str(error)) from None
    if width != wanted:
        raise ConfigError(f"model._target_={config.model['_target_']} gives {width} outputs per row; "
                          f"data.task={config.data.task} needs {wanted}")


def _check_optimizer(train: Any) -> None:
    if train.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={train.optimizer} is unknown; choose one of {', '.join(OPTIMIZERS)}")
    if train.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule={train.schedule} is unknown; choose one of {', '.join(SCHEDULES)}")
    if not (0 <= train.momentum < 1 and train.weight_decay >= 0 and train.lr_step >= 1 and 0 < train.lr_gamma <= 1):
        raise ConfigError("train.momentum must be in [0, 1), train.weight_decay >= 0, train.lr_step >= 1 "
                          "and train.lr_gamma in (0, 1]")
    if len(train.betas) != 2 or not all(0 <= beta < 1 for beta in train.betas):
        raise ConfigError(f"train.betas={train.betas} must be two numbers in [0, 1)")
    if train.optimizer != "sgd" and train.eps < ADAM_MIN_EPS:
        raise ConfigError(f"train.eps={train.eps} is below {ADAM_MIN_EPS} (fixed point would let one-ulp "
                          "gradients take full steps)")


def default_party_specs(count: int) -> list[PartySpec]:
    return [PartySpec(name=f"bank{rank}") for rank in range(count)]
