"""Tables written back to files: a ``.csv`` or ``.parquet`` of imputed or synthetic rows.

A CSV that was read keeps its own text: a cell present in the source is written as the source wrote it, byte for
byte, and only the cells that were missing there get new text. So filling a file changes nothing a user typed.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyrovae.data.tables import MISSING, TABLE_SUFFIXES

if TYPE_CHECKING:
    import pandas as pd

SIGNIFICANT_DIGITS = 7
"""Digits of a new number written to a CSV: the precision of the float32 values the model computes with."""


def cell_text(value: Any) -> str:
    """A new cell as CSV text: whole numbers without a fraction, other numbers to :data:`SIGNIFICANT_DIGITS`."""
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else f"{value:.{SIGNIFICANT_DIGITS}g}"
    return str(value)


def read_cells_as_written(path: str | Path) -> pd.DataFrame:
    """Every cell of a CSV file that :func:`~pyrovae.data.tables.read_table` has read, as the text it holds (quotes
    removed), in the same rows and columns."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)


def table_bytes(table: pd.DataFrame, suffix: str, source: str | Path | None = None) -> bytes:
    """``table`` as the bytes of a ``suffix`` file (``.csv`` or ``.parquet``).

    With ``source``, the CSV file ``table`` was read from and filled: the cells present there keep its text. The
    rows of ``table`` are the source's, in order, once or (numbered in a first ``imputation`` column) several times
    over.
    """
    import pandas as pd

    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"a table is written to a .csv or .parquet file, not {suffix!r}")
    buffer = io.BytesIO()
    if suffix == ".parquet":
        table.to_parquet(buffer, index=False)
        return buffer.getvalue()
    text = table.map(cell_text).astype(object).where(table.notna(), "")
    if source is not None:
        written = read_cells_as_written(source)
        copies = len(table) // len(written)
        written = pd.concat([written] * copies, ignore_index=True)
        for name in written.columns:
            present = ~written[name].isin(MISSING)
            text[name] = written[name].where(present, text[name])
    text.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()
