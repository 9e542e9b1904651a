"""The whole run's settings as one typed schema, assembled from each consumer's own part."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from mpc.data.config import DataConfig
from mpc.models import DEFAULT_MODEL
from mpc.pretrain import PretrainConfig
from mpc.psi import PsiConfig
from mpc.release import ReleaseRule, default_release
from mpc.training import TrainConfig
from parties.transport.base import TransportOptions
from protocols.suite import ProtocolConfig


@dataclass
class PartySpec:
    """One party: its name and its own files (a training table, optionally a held-out one)."""

    name: str = ""
    data: str = ""
    test_data: str = ""


@dataclass
class PartyConfig:
    """``party.*``: which party this process is, when one process runs one party."""

    rank: Optional[int] = None


@dataclass
class LaunchConfig:
    """``launch.*``: how parties are started and how long the launcher waits for them."""

    mode: str = "local"
    timeout_s: float = 1800.0
    grace_s: float = 10.0


@dataclass
class ScoreConfig:
    """Set by ``cotrain predict shares=...``: the parties score rows instead of training."""

    shares: str = ""  # outputs/<run id>: each party's folder holds model_shares.pt and model.json
    data: str = ""  # the owner's raw rows; only the owner reads it
    owner: str = ""  # the party whose rows are scored and who alone receives the scores
    out: str = ""  # where the owner writes the scores (CSV)


@dataclass
class RunConfig:
    num_parties: int = 3
    seed: int = 0
    run_id: str = ""
    output_dir: str = "outputs"
    device: str = "cpu"
    log_level: str = "INFO"
    parties: list[PartySpec] = field(default_factory=list)
    party: PartyConfig = field(default_factory=PartyConfig)
    transport: TransportOptions = field(default_factory=TransportOptions)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    model: Dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MODEL))  # _target_ and its arguments
    data: DataConfig = field(default_factory=DataConfig)
    psi: PsiConfig = field(default_factory=PsiConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    release: list[ReleaseRule] = field(default_factory=default_release)

    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.parties)
