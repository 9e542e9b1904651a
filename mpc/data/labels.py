"""What a label column may hold, per task; checked by each party on its own table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mpc.data.tables import table_error

# regression labels enter the ring as they are (not scaled): keep them well inside fixed point
REGRESSION_LABEL_LIMIT = 2.0**20


def check_labels(labels: pd.Series, party: str, path: Any, label: str, task: str, classes: int) -> None:
    """Binary: 0 and 1; multiclass: integers 0..classes-1; regression: |y| < 2^20."""
    values = labels.to_numpy(np.float64)
    if task == "regression":
        bad = ~(np.abs(values) < REGRESSION_LABEL_LIMIT)
        allowed = f"numbers of magnitude below {REGRESSION_LABEL_LIMIT:.0f} (scale them first)"
    else:
        count = 2 if task == "binary" else classes
        bad = ~np.isin(values, np.arange(count))
        allowed = "only 0 and 1" if task == "binary" else f"only the class numbers 0..{count - 1} (data.classes={count})"
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise table_error(party, path, f"label column {label!r} (data.label) must hold {allowed}, "
                                       f"data row {row + 1} does not", f"it holds {labels.tolist()[row]!r}")
