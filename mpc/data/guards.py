"""Range guards: every value a party feeds into the ring must fit, checked before it is shared.

Two limits, both checked by each party on its own rows:

- Raw values: |x| <= RAW_LIMIT = 2^40 (about 1.1e12: timestamps in seconds, amounts in cents,
  numeric ids that are features). Within it the exact statistics (``mpc.data.statistics``)
  hold their 1e-6 relative accuracy down to std = 1e-6 |mean|: the float64 local sums keep
  |x| * 2^-53 <= 2^-13 absolute per term, and a value beyond it is far more likely a unit
  error or a sentinel (9.99e15) than data.
- Scaled values: |(x - mean) / std| <= SCALED_LIMIT = 2^12. CrypTen encodes a value v as
  round(v * 2^16) in int64 and multiplies two encodings before truncating, so every product
  needs |a * b| < 2^31, and a matrix product's sum of B such terms (B <= 2^10 rows per batch)
  the same. Features within 2^12 leave a factor of 2^19 for weights, gradients and class
  weights, and 2^9 for the batch sum, before the model's products reach that limit. A
  training column's scaled values never exceed sqrt(rows) in size; a value past the limit is
  an outlier (one cell dominating a column's spread) or a held-out value far outside the
  training range.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mpc.data.tables import table_error

RAW_LIMIT = 2.0**40
SCALED_LIMIT = 2.0**12


def _first_beyond(values: np.ndarray, limit: float) -> tuple[int, int] | None:
    """(row, column) of the first value (in row order) whose magnitude exceeds ``limit``."""
    rows, columns = np.nonzero(np.abs(values) > limit)
    if len(rows) == 0:
        return None
    first = int(np.argmin(rows * values.shape[1] + columns))
    return int(rows[first]), int(columns[first])


def check_raw_range(values: np.ndarray, columns: Sequence[str], party: str, path: Any) -> None:
    """Stop on any raw value beyond RAW_LIMIT (the exact statistics' supported range)."""
    found = _first_beyond(values, RAW_LIMIT)
    if found is not None:
        row, column = found
        raise table_error(
            party, path,
            f"column {columns[column]!r} has a value beyond the supported magnitude 2^40 (about 1.1e12) "
            f"at data row {row + 1}; rescale the column (e.g. to thousands) or drop it",
            f"the cell holds {values[row, column]!r}")


def check_scaled_range(scaled: np.ndarray, columns: Sequence[str], party: str, path: Any) -> None:
    """Stop on any standardised value beyond SCALED_LIMIT (the ring's headroom for products)."""
    found = _first_beyond(scaled, SCALED_LIMIT)
    if found is not None:
        row, column = found
        raise table_error(
            party, path,
            f"column {columns[column]!r} at data row {row + 1} lies more than 2^12 standard deviations "
            f"from the mean after scaling, beyond what fixed point can train on; remove the outlier "
            f"or transform the column (e.g. a logarithm)",
            f"scaled value {scaled[row, column]:.4g}")
