"""The embedded default: generated bank tables when the config names no files.

The tables are a pure function of (partition, parties, rows, test rows, seed, overlap). A local launch
writes them once under ``<output_dir>/<run id>/data``. Under mpirun, torchrun or one command
per host every party process generates them itself, into a folder named by those inputs
(``<output_dir>/demo-data/<key>``), so every rank finds its own file, the evaluator can also
read the others' files for the plaintext reference, and ranks that share a disk write
identical bytes (each file is written under a private name and renamed into place).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from mpc.data.synthetic import GeneratedFiles, write_horizontal, write_vertical
from mpc.data.synthetic_sequences import write_sequences, write_vertical_sequences
from parties.config import PartySpec, RunConfig


def _needs_demo_data(config: RunConfig) -> bool:
    return not (config.parties and all(spec.data for spec in config.parties))


def _generate(config: RunConfig, directory: Path) -> GeneratedFiles:
    d = config.data
    if d.kind == "sequence" and d.partition == "vertical":
        return write_vertical_sequences(directory, config.num_parties, d.rows, d.test_rows, config.seed,
                                        overlap=d.overlap)
    if d.kind == "sequence":
        return write_sequences(directory, config.num_parties, d.rows, d.test_rows, config.seed)
    if d.partition == "horizontal":
        return write_horizontal(directory, config.num_parties, d.rows, d.test_rows, config.seed)
    return write_vertical(directory, config.num_parties, d.rows, d.test_rows, config.seed, overlap=d.overlap)


def _with_files(config: RunConfig, files: GeneratedFiles) -> RunConfig:
    names = [spec.name for spec in config.parties] or [f"bank{rank}" for rank in range(config.num_parties)]
    specs = [
        PartySpec(name=name, data=str(files.train[rank]),
                  test_data=str(files.test[rank]) if rank < len(files.test) else "")
        for rank, name in enumerate(names)
    ]
    return dataclasses.replace(config, parties=specs)


def with_demo_data(config: RunConfig, run_id: str) -> RunConfig:
    """Fill in the parties' files with freshly generated data, if none were configured."""
    if not _needs_demo_data(config):
        return config
    files = _generate(config, Path(config.output_dir) / run_id / "data")
    return dataclasses.replace(_with_files(config, files), run_id=run_id)


def demo_data_key(config: RunConfig) -> str:
    d = config.data
    overlap = "" if d.overlap == 1 else f"-overlap{d.overlap:g}"
    kind = "" if d.kind == "table" else f"{d.kind}-"
    return f"{kind}{d.partition}-{config.num_parties}p-{d.rows}x{d.test_rows}-seed{config.seed}{overlap}"


def with_shared_demo_data(config: RunConfig) -> RunConfig:
    """Demo data for a party started by a launcher: regenerated here, deterministically."""
    if not _needs_demo_data(config):
        return config
    directory = Path(config.output_dir) / "demo-data" / demo_data_key(config)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".partial-") as scratch:
        files = _generate(config, Path(scratch))
        final = GeneratedFiles(train=[directory / p.name for p in files.train],
                               test=[directory / p.name for p in files.test])
        for source, target in zip([*files.train, *files.test], [*final.train, *final.test]):
            os.replace(source, target)  # atomic; concurrent ranks write identical bytes
    return _with_files(config, final)
