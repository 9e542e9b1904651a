"""Launcher detection and the per-rank config, without starting any process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launch.config import ConfigError, load_config
from launch.demo_data import with_shared_demo_data
from launch.launchers import detect, resolve
from launch.party_processes import core_share
from parties.devices import local_rank, party_device

MPICH = {"PMI_RANK": "1", "PMI_SIZE": "3", "MPI_LOCALRANKID": "1"}
OPENMPI = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "31000"}
TFP = ["protocol=tfp"]  # one process per party, no dealer rank: these tests are about the launchers


def test_detects_each_launcher() -> None:
    assert detect({}).kind == "local"
    mpich, openmpi, torchrun = detect(MPICH), detect(OPENMPI), detect(TORCHRUN)
    assert (mpich.kind, mpich.rank, mpich.world_size, mpich.local_rank) == ("mpirun", 1, 3, 1)
    assert (openmpi.kind, openmpi.rank, openmpi.world_size) == ("mpirun", 2, 4)
    assert (torchrun.kind, torchrun.rank, torchrun.master_addr, torchrun.master_port) == \
        ("torchrun", 1, "10.0.0.5", 31000)


def test_mpirun_rank_and_world_size_come_from_mpi() -> None:
    config, rank, info = resolve(load_config(TFP), TFP, MPICH)
    assert (rank, config.num_parties, config.transport.name, info.kind) == (1, 3, "mpi", "mpirun")
    config, rank, _ = resolve(load_config(TFP), TFP, OPENMPI)  # world size adopted when not set
    assert (rank, config.num_parties, len(config.parties)) == (2, 4, 4)


def test_explicit_num_parties_must_match_the_launcher() -> None:
    with pytest.raises(ConfigError, match="mpirun started 3 processes but num_parties=2"):
        resolve(load_config([*TFP, "num_parties=2"]), [*TFP, "num_parties=2"], MPICH)


def test_torchrun_supplies_the_rendezvous_address() -> None:
    config, rank, _ = resolve(load_config([*TFP, "launch=torchrun"]), [*TFP, "launch=torchrun"], TORCHRUN)
    assert (rank, config.num_parties, config.transport.name) == (1, 2, "gloo")
    assert (config.transport.master_addr, config.transport.master_port) == ("10.0.0.5", 31000)
    given = [*TFP, "launch=torchrun", "transport.master_port=32000"]
    assert resolve(load_config(given), given, TORCHRUN)[0].transport.master_port == 32000


def test_launcher_modes_refuse_to_run_without_their_launcher() -> None:
    with pytest.raises(ConfigError, match="not started by mpirun"):
        resolve(load_config(["launch=mpirun"]), ["launch=mpirun"], {})
    with pytest.raises(ConfigError, match="party.rank"):
        resolve(load_config(["launch=host"]), ["launch=host"], {})
    with pytest.raises(ConfigError, match="started by mpirun"):
        resolve(load_config(["launch=torchrun"]), ["launch=torchrun"], MPICH)


def test_one_command_per_host_takes_party_rank() -> None:
    overrides = ["launch=host", "party.rank=2", "transport.master_addr=10.1.1.1"]
    config, rank, info = resolve(load_config(overrides), overrides, {})
    assert (rank, info.kind, config.transport.master_addr) == (2, "host", "10.1.1.1")


def test_launch_configs_pick_their_transport() -> None:
    assert load_config(["launch=mpirun"]).transport.name == "mpi"
    assert load_config(["launch=mpirun", "transport=gloo"]).transport.name == "gloo"
    assert load_config(["launch=torchrun"]).launch.mode == "torchrun"


def test_every_rank_regenerates_identical_demo_data(tmp_path: Path) -> None:
    config = load_config([f"output_dir={tmp_path}", "data.rows=40", "data.test_rows=30", "num_parties=3"])
    first = with_shared_demo_data(config)
    contents = {spec.data: Path(spec.data).read_bytes() for spec in first.parties}
    again = with_shared_demo_data(config)  # another rank, same host: same paths, same bytes
    assert [spec.data for spec in again.parties] == list(contents)
    assert all(Path(path).read_bytes() == data for path, data in contents.items())
    assert first.parties[0].test_data and not first.parties[1].test_data
    vertical = with_shared_demo_data(load_config([f"output_dir={tmp_path}", "data.partition=vertical",
                                                   "data.rows=40", "data.test_rows=30"]))
    assert all(Path(spec.test_data).is_file() for spec in vertical.parties)


def test_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert party_device("cpu", 3) == "cpu"
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("MPI_LOCALRANKID", "2")
    assert local_rank(0) == 2
    monkeypatch.delenv("MPI_LOCALRANKID")
    assert local_rank(1) == 1


def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU; see tests/launch/test_gpu.py")
    with pytest.raises(RuntimeError, match="no usable CUDA device"):
        party_device("cuda", 0)


def test_a_dealer_suite_is_one_more_process() -> None:
    four = {"PMI_RANK": "3", "PMI_SIZE": "4"}
    config, rank, _ = resolve(load_config(["protocol=dealer"]), ["protocol=dealer"], four)
    assert (rank, config.num_parties) == (3, 3)  # rank 3 is the dealer
    config, _, _ = resolve(load_config(["protocol=dealer"]), ["protocol=dealer"], {"PMI_RANK": "0", "PMI_SIZE": "3"})
    assert config.num_parties == 2
    given = ["protocol=dealer", "num_parties=3"]
    with pytest.raises(ConfigError, match="plus the dealer needs 4 processes"):
        resolve(load_config(given), given, {"PMI_RANK": "0", "PMI_SIZE": "3"})


def test_without_a_transport_the_launcher_picks_its_own() -> None:
    assert resolve(load_config(TFP), TFP, TORCHRUN)[0].transport.name == "gloo"
    assert resolve(load_config([*TFP, "transport=zmq"]), [*TFP, "transport=zmq"], MPICH)[0].transport.name == "zmq"


def test_local_parties_split_the_cores_they_may_run_on() -> None:
    cores = len(os.sched_getaffinity(0))
    assert core_share(1) == cores and core_share(cores) == 1
    assert core_share(cores + 1) == 1 and core_share(2 * cores + 1) == 1  # never none
    assert core_share(2) == cores // 2 or cores == 1
