"""Run a secure training job from Python (a notebook, a script, a test).

    from launch.api import train
    summary = train(model="my_bank.models.FraudNet", hidden=64,
                    overrides=["num_parties=3", "train.epochs=3"])

``train`` starts the local party processes exactly as ``cotrain run`` does and returns the
run's summary (the contents of ``summary.json``); every output lands in the same place.
The model runs in every party process, so its class must live in a module those processes
can import (a ``.py`` file on ``PYTHONPATH``), not in ``__main__`` or a notebook cell.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Sequence

from launch.cli import run
from launch.config import load_config
from parties.party import new_run_id


class ModelNotImportable(ValueError):
    """The model class cannot be imported by the party processes."""


def import_path(model: type) -> str:
    """``module.Class`` for a class that other processes can import by that name."""
    module, name = model.__module__, model.__qualname__
    hint = (f"define {name} in a module file the party processes can import (e.g. my_models.py on "
            f"PYTHONPATH) and pass that class or the string 'my_models.{name.rsplit('.', 1)[-1]}'")
    if module == "__main__" or "<locals>" in name:
        where = "a function" if "<locals>" in name else "__main__ (a script run directly or a notebook cell)"
        raise ModelNotImportable(f"model {name} is defined in {where}, which the party processes cannot import; {hint}")
    try:
        found = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        raise ModelNotImportable(f"model {name}: {module}.{name} cannot be imported; {hint}") from None
    if found is not model:
        raise ModelNotImportable(f"model {name}: {module}.{name} names a different object; {hint}")
    return f"{module}.{name}"


def model_overrides(model: type | str, arguments: dict[str, Any]) -> list[str]:
    """Hydra overrides choosing ``model`` (a class or an import path) with its arguments."""
    target = model if isinstance(model, str) else import_path(model)
    return ["model=custom", f"model._target_={target}",
            *(f"++model.{key}={json.dumps(value)}" for key, value in arguments.items())]


def train(model: type | str | None = None, overrides: Sequence[str] = (), **model_arguments: Any) -> dict:
    """Train on local party processes, as ``cotrain run``; returns the run summary.

    ``model``: the model class or its import path (default: the configured model); keyword
    arguments go to its constructor (``in_features`` is filled in by the engine).
    ``overrides``: any ``cotrain run`` settings, e.g. ``["data.task=multiclass", "data.classes=3"]``.
    Raises ``launch.config.ConfigError`` for a bad setting and ``launch.local.LaunchError``
    when a party fails.
    """
    if model is None and model_arguments:
        raise TypeError("model arguments were given without a model")
    settings = [*overrides, *(model_overrides(model, model_arguments) if model is not None else [])]
    config = load_config(settings)
    run_id = config.run_id or new_run_id()
    run([*settings, f"run_id={run_id}"])
    return json.loads((Path(config.output_dir) / run_id / "summary.json").read_text())
