"""``cotrain run [overrides...]``: the one command that starts a secure training run."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from launch.config import ConfigError, default_party_specs, load_config
from launch.demo_data import with_demo_data, with_shared_demo_data
from launch.launchers import resolve
from launch.local import LaunchError, launch_local
from launch.mpirun import launch_mpirun
from parties.entry import exit_now, party_main
from parties.party import new_run_id


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cotrain", description="Secure multi-party training on CrypTen.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train a model across parties",
                              description="Hydra overrides, e.g. num_parties=4 model=mlp train.epochs=3")
    run.add_argument("overrides", nargs="*", help="key=value settings (see conf/config.yaml)")
    return parser


def run(overrides: Sequence[str]) -> int:
    config = load_config(overrides)
    config, rank, _ = resolve(config, overrides)
    if not config.parties:
        config = dataclasses.replace(config, parties=default_party_specs(config.num_parties))
    if rank is not None:  # this process is one party; its peers were started elsewhere
        config = with_shared_demo_data(config)  # every rank regenerates the demo tables itself
        party_main(config, rank)
        return 0
    if config.transport.name == "mpi":  # MPI ranks must come from an MPI launcher
        launch_mpirun(config, overrides, config.run_id or new_run_id())
        return 0
    config = with_demo_data(config, config.run_id or new_run_id())
    launch_local(config)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        return run(arguments.overrides)
    except ConfigError as error:
        print(f"cotrain: {error}", file=sys.stderr)
        return 2
    except LaunchError as error:
        print(f"cotrain: {error}", file=sys.stderr)
        exit_now(1)  # the parties are gone; tearing torch down would only delay the exit code


if __name__ == "__main__":
    sys.exit(main())
