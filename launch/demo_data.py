"""The embedded default: generated bank tables when the config names no files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mpc.data.synthetic import write_horizontal, write_vertical
from parties.config import PartySpec, RunConfig


def with_demo_data(config: RunConfig, run_id: str) -> RunConfig:
    """Fill in the parties' files with freshly generated data, if none were configured."""
    if config.parties and all(spec.data for spec in config.parties):
        return config
    directory = Path(config.output_dir) / run_id / "data"
    writer = write_horizontal if config.data.partition == "horizontal" else write_vertical
    files = writer(directory, config.num_parties, config.data.rows, config.data.test_rows, config.seed)
    names = [spec.name for spec in config.parties] or [f"bank{rank}" for rank in range(config.num_parties)]
    specs = [
        PartySpec(name=name, data=str(files.train[rank]),
                  test_data=str(files.test[rank]) if rank < len(files.test) else "")
        for rank, name in enumerate(names)
    ]
    return dataclasses.replace(config, parties=specs, run_id=run_id)
