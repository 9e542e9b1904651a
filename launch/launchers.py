"""Which launcher started this process, and what it says about rank, world size and GPU.

``cotrain run`` is the same command everywhere; only who starts it differs:

* ``local``: no rank anywhere, so this process spawns one process per party;
* ``mpirun``: MPICH (``PMI_RANK``/``PMI_SIZE``) or Open MPI (``OMPI_COMM_WORLD_*``);
* ``torchrun``: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` plus ``MASTER_ADDR``/``MASTER_PORT``;
* ``host``: one command per host with ``party.rank=i`` (and the peers' addresses in config).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from launch.config import ConfigError, default_party_specs, validate
from parties.config import RunConfig
from parties.dealer import has_dealer, world_size
from protocols.suite import check_party_count

_MPI_VARIABLES = (
    # (rank, size, local rank)
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_RANK"),
)


LAUNCHER_TRANSPORTS = {"mpirun": "mpi", "torchrun": "gloo"}


@dataclass(frozen=True)
class LauncherInfo:
    kind: str  # local | mpirun | torchrun | host
    rank: Optional[int] = None
    world_size: Optional[int] = None
    local_rank: Optional[int] = None
    master_addr: Optional[str] = None
    master_port: Optional[int] = None


def _int(environ: Mapping[str, str], name: str) -> Optional[int]:
    value = environ.get(name, "")
    return int(value) if value.isdigit() else None


def detect(environ: Mapping[str, str] | None = None) -> LauncherInfo:
    """What the environment says about this process (``local`` when nothing does)."""
    environ = os.environ if environ is None else environ
    if _int(environ, "RANK") is not None and _int(environ, "WORLD_SIZE") is not None:
        port = _int(environ, "MASTER_PORT")
        return LauncherInfo("torchrun", _int(environ, "RANK"), _int(environ, "WORLD_SIZE"),
                            _int(environ, "LOCAL_RANK"), environ.get("MASTER_ADDR") or None, port)
    for rank_name, size_name, local_name in _MPI_VARIABLES:
        if _int(environ, rank_name) is not None:
            return LauncherInfo("mpirun", _int(environ, rank_name), _int(environ, size_name),
                                _int(environ, local_name))
    if _int(environ, "RANK") is not None:  # a bare RANK: some other launcher
        return LauncherInfo("host", _int(environ, "RANK"), None, _int(environ, "LOCAL_RANK"))
    return LauncherInfo("local")


def _given(overrides: Sequence[str], key: str) -> bool:
    return any(o.lstrip("+~").partition("=")[0] == key for o in overrides)


def resolve(config: RunConfig, overrides: Sequence[str],
            environ: Mapping[str, str] | None = None) -> tuple[RunConfig, Optional[int], LauncherInfo]:
    """The config this process runs with and its rank (None: launch every party locally).

    Under mpirun/torchrun the launcher's world size becomes ``num_parties`` unless that was
    set explicitly, in which case the two must agree.
    """
    info = detect(environ)
    mode = config.launch.mode
    if info.kind in LAUNCHER_TRANSPORTS and not _given(overrides, "transport") \
            and not _given(overrides, "transport.name") and mode == "local":
        # no transport chosen: use the launcher's own wire (MPI under mpirun; gloo through
        # torchrun's rendezvous store), which needs no addresses or ports in the config
        name = LAUNCHER_TRANSPORTS[info.kind]
        config = dataclasses.replace(config, transport=dataclasses.replace(config.transport, name=name))
    if config.party.rank is not None:  # one command per host (or an explicit rank under a launcher)
        return config, config.party.rank, dataclasses.replace(info, kind="host" if info.kind == "local" else info.kind,
                                                              rank=config.party.rank)
    if info.kind == "local":
        if mode in ("mpirun", "torchrun"):
            raise ConfigError(f"launch={mode} but this process was not started by {mode}; run e.g. "
                              f"`{'mpirun -n' if mode == 'mpirun' else 'torchrun --nproc_per_node'} "
                              f"{config.num_parties} cotrain run launch={mode}`")
        if mode == "host":
            raise ConfigError("launch=host needs party.rank=<this host's rank> (and the peers' addresses)")
        return config, None, info
    if mode in ("mpirun", "torchrun") and info.kind != mode:
        raise ConfigError(f"launch={mode} but this process was started by {info.kind}")
    dealer = int(has_dealer(config))
    expected = world_size(config)
    if info.world_size is not None and info.world_size != expected:
        with_dealer = " plus the dealer" if dealer else ""
        if _given(overrides, "num_parties") or (config.parties and len(config.parties) + dealer != info.world_size):
            raise ConfigError(f"{info.kind} started {info.world_size} processes but num_parties="
                              f"{config.num_parties}{with_dealer} needs {expected} processes; "
                              f"start one process per party{with_dealer}")
        parties = info.world_size - dealer
        if not 2 <= parties <= 5:
            raise ConfigError(f"{info.kind} started {info.world_size} processes: {parties} parties{with_dealer}; "
                              "cotrain runs 2..5 parties")
        try:
            check_party_count(config.protocol, parties)
        except ValueError as error:
            raise ConfigError(f"{info.kind} started {info.world_size} processes: {error}") from None
        config = dataclasses.replace(config, num_parties=parties, parties=default_party_specs(parties))
        validate(config)  # every setting that depends on the party count, against the real count
    if info.rank is None or not 0 <= info.rank < expected:
        raise ConfigError(f"{info.kind} gave this process rank {info.rank}, not a party rank "
                          f"(0..{expected - 1})")
    if info.kind == "torchrun" and config.transport.name == "gloo":
        transport = config.transport
        if info.master_addr and not _given(overrides, "transport.master_addr"):
            transport = dataclasses.replace(transport, master_addr=info.master_addr)
        if info.master_port and not _given(overrides, "transport.master_port"):
            transport = dataclasses.replace(transport, master_port=info.master_port)
        config = dataclasses.replace(config, transport=transport)
    return config, info.rank, info

