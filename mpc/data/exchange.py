"""Metadata rounds between the parties, and stopping all of them at once on bad input.

A party whose own check failed sends only the error's public part (party, column, row, kind
of problem); its full message, which may carry a cell value or its file's path, goes to its
own log and is what it raises itself.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

from mpc.data.tables import DataError

log = logging.getLogger("cotrain.data")

T = TypeVar("T")


def exchange(comm: Any, payload: dict, failure: DataError | None = None) -> list[dict]:
    """Every party's payload, in rank order; any party's failure stops every party."""
    if failure is not None:
        log.error("%s", failure)
        payload = {"error": failure.public}
    gathered = [comm.broadcast_obj(payload if rank == comm.get_rank() else None, rank)
                for rank in range(comm.get_world_size())]
    if failure is not None:
        raise failure
    for message in gathered:
        if message.get("error"):
            raise DataError(str(message["error"]))
    return gathered


def checked_by_all(comm: Any, check: Callable[[], T]) -> T:
    """Run this party's ``check``; every party learns whether all passed before going on."""
    try:
        result, failure = check(), None
    except DataError as error:
        result, failure = None, error
    exchange(comm, {}, failure)
    return result
