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


def _stop_beyond(values: np.ndarray, limit: float, columns: Sequence[str], party: str, path: Any,
                 problem: str, detail: str) -> None:
    """Raise on the first value (in row order) whose magnitude exceeds ``limit``; the templates
    get ``column`` and ``row`` (shared with the peers) and ``value`` (the owner's only)."""
    rows, positions = np.nonzero(np.abs(values) > limit)
    if len(rows) == 0:
        return
    first = int(np.argmin(rows * values.shape[1] + positions))
    row, column = int(rows[first]), int(positions[first])
    raise table_error(party, path, problem.format(column=columns[column], row=row + 1),
                      detail.format(value=float(values[row, column])))


def check_raw_range(values: np.ndarray, columns: Sequence[str], party: str, path: Any) -> None:
    """Stop on any raw value beyond RAW_LIMIT (the exact statistics' supported range)."""
    _stop_beyond(values, RAW_LIMIT, columns, party, path,
                 "column {column!r} has a value beyond the supported magnitude 2^40 (about 1.1e12) at data "
                 "row {row}; rescale the column (e.g. to thousands) or drop it", "the cell holds {value:.17g}")


def check_scaled_range(scaled: np.ndarray, columns: Sequence[str], party: str, path: Any) -> None:
    """Stop on any standardised value beyond SCALED_LIMIT (the ring's headroom for products)."""
    _stop_beyond(scaled, SCALED_LIMIT, columns, party, path,
                 "column {column!r} at data row {row} lies more than 2^12 standard deviations from the mean "
                 "after scaling, beyond what fixed point can train on; remove the outlier or transform the "
                 "column (e.g. a logarithm)", "scaled value {value:.4g}")
