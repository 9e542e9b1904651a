"""``cotrain run [overrides...]`` starts a secure training run; ``cotrain predict`` scores rows with its model."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Sequence

from launch.audit import audit
from launch.config import ConfigError, default_party_specs, load_config
from launch.demo_data import with_demo_data, with_shared_demo_data
from launch.launchers import resolve
from launch.local import LaunchError, launch_local
from launch.mpirun import launch_mpirun
from launch.outcome import record_failure, record_success
from launch.predict import predict
from mpc.data.tables import DataError
from mpc.scoring import ModelFileError
from parties.entry import party_main
from parties.party import new_run_id


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cotrain", description="Secure multi-party training on CrypTen.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train a model across parties",
                              description="Hydra overrides, e.g. num_parties=4 model=mlp train.epochs=3")
    run.add_argument("overrides", nargs="*", help="key=value settings (see conf/config.yaml)")
    score = commands.add_parser(
        "predict", help="score raw rows with a trained model",
        description="model=<model.pt> data=<csv> out=<csv> (plaintext, revealed model) or "
                    "shares=outputs/<run id> data=<csv> owner=<party> out=<csv> (under MPC, from the shares)")
    score.add_argument("settings", nargs="*", help="key=value settings")
    check = commands.add_parser("audit", help="verify a run's audit logs",
                                description="check every party's hash chain and that the parties' logs agree")
    check.add_argument("run_dir", help="the run's folder, outputs/<run id>")
    return parser


def run(overrides: Sequence[str], started: float | None = None) -> int:
    """Train; returns the exit code (see ``launch.outcome``)."""
    started = time.perf_counter() if started is None else started
    config = load_config(overrides)
    config, rank, _ = resolve(config, overrides)
    if not config.parties:
        config = dataclasses.replace(config, parties=default_party_specs(config.num_parties))
    if rank is not None:  # this process is one party; its peers were started elsewhere
        config = with_shared_demo_data(config)  # every rank regenerates the demo tables itself
        party_main(config, rank)
        return 0
    run_id = config.run_id or new_run_id()
    try:
        if config.transport.name == "mpi":  # MPI ranks must come from an MPI launcher
            launch_mpirun(config, overrides, run_id)
        else:
            config = dataclasses.replace(with_demo_data(config, run_id), run_id=run_id)
            launch_local(config)
    except LaunchError as error:
        record_failure(config.output_dir, run_id, str(error), time.perf_counter() - started)
        raise
    return record_success(config.output_dir, run_id, time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    arguments = _parser().parse_args(argv)
    if arguments.command == "audit":
        return audit(arguments.run_dir)
    try:
        if arguments.command == "predict":
            return predict(arguments.settings)
        return run(arguments.overrides, started)
    except (ConfigError, ModelFileError, DataError) as error:
        print(f"cotrain: {error}", file=sys.stderr)
        return 2
    except LaunchError as error:
        print(f"cotrain: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
