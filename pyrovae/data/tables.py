"""Tables: typed columns read from a CSV or Parquet file or a pandas DataFrame, and the tensor a table model reads.

Every column gets one of :data:`COLUMN_TYPES`, inferred from its training values (:func:`infer_schema`) or given.
The :class:`TableSchema` keeps what encoding needs (the levels of categories, the standardization of reals), encodes
a table as a float tensor ``(N, C)`` with ``NaN`` for a missing cell, for the model to leave out of its likelihood
(MIWAE, Mattei & Frellsen 2019), and writes encoded rows back as the table they stand for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pyrovae.settings import COLUMN_TYPES, SettingError, guess

if TYPE_CHECKING:
    import pandas as pd

TABLE_SUFFIXES = (".csv", ".parquet")
MISSING = ("", "NA", "NaN")
"""The CSV cells read as missing values."""
MAX_LEVELS = 10
"""Integers with at most this many distinct values are categorical (two: binary); with more, real: measurements
in whole units (grams, millimetres) are far from Poisson, so ``count`` is given, never inferred."""
Level = str | int | float | bool
NEEDS = {"real": "a finite number", "positive": "a number > 0", "count": "a whole number >= 0"}
"""What a cell of a numeric column type must hold."""


@dataclasses.dataclass
class Column:
    """One column: its name and type; ``levels``, the values seen in training, sorted, each encoded by its index
    (binary and categorical); ``mean`` and ``std``, the standardization of a real column; ``dtype``, the pandas dtype
    it was read with, to write values back alike."""

    name: str
    type: str
    levels: list[Level] | None = None
    mean: float | None = None
    std: float | None = None
    dtype: str = "float64"

    def __post_init__(self) -> None:
        import pandas as pd

        if not isinstance(self.name, str) or not isinstance(self.dtype, str):
            raise ValueError(f"a column's name and dtype are strings, got {self.name!r} and {self.dtype!r}")
        where = f"column {self.name!r}"
        if self.type not in COLUMN_TYPES:
            raise ValueError(f"{where} has the unknown type {self.type!r}; choose one of {', '.join(COLUMN_TYPES)}"
                             f"{guess(self.type, COLUMN_TYPES)}")
        try:
            pd.api.types.pandas_dtype(self.dtype)
        except TypeError:
            raise ValueError(f"{where} has the dtype {self.dtype!r}, which pandas does not know") from None
        leveled = self.type in ("binary", "categorical")
        if leveled != (self.levels is not None):
            raise ValueError(f"{where} is {self.type} and " + ("needs its levels" if leveled else "has no levels"))
        if leveled:
            fine = isinstance(self.levels, list) and all(isinstance(v, (str, int, float)) for v in self.levels)
            if not fine or len(set(self.levels)) != len(self.levels) or len(self.levels) < 2 or (
                    self.type == "binary" and len(self.levels) != 2):
                raise ValueError(f"{where} is {self.type} and needs a list of "
                                 f"{'two' if self.type == 'binary' else 'two or more'} distinct levels (text, numbers "
                                 f"or booleans), got {self.levels!r:.80}")
        real = self.type == "real"
        if real != (self.mean is not None and self.std is not None) or (not real and self.std is not None):
            raise ValueError(f"{where} is {self.type}: " + ("a real column needs its mean and std" if real
                                                            else "only a real column has a mean and std"))
        if real:
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.mean, self.std))
            if not numeric or not math.isfinite(self.mean) or not (math.isfinite(self.std) and self.std > 0):
                raise ValueError(f"{where} needs a finite mean and a finite std > 0, got {self.mean!r} and "
                                 f"{self.std!r}")
            self.mean, self.std = float(self.mean), float(self.std)

    @property
    def spec(self) -> str:
        """The model's name for the column's type: ``real`` ... ``categorical:L`` with ``L`` levels."""
        return f"categorical:{len(self.levels)}" if self.type == "categorical" else self.type

    def encode(self, cells: pd.Series, where: str) -> np.ndarray:
        """The cells as floats (``NaN`` where missing): a level's index, a standardized real or the number itself."""
        import pandas as pd

        missing = cells.isna().to_numpy()
        if self.levels is not None:
            index = {level: i for i, level in enumerate(self.levels)}
            codes = cells.map(index).to_numpy(float, na_value=np.nan)
            unseen = ~missing & np.isnan(codes)
            if unseen.any():
                new = list(dict.fromkeys(cells[unseen]))
                shown = ", ".join(map(repr, new[:5])) + (", ..." if len(new) > 5 else "")
                raise ValueError(f"{where}: column {self.name!r} holds {shown}, not among the levels seen in training "
                                 f"({', '.join(map(repr, self.levels[:8]))}{', ...' if len(self.levels) > 8 else ''})"
                                 f"; drop those rows or blank those cells")
            return codes
        values = pd.to_numeric(cells, errors="coerce").to_numpy(float, na_value=np.nan)
        outside = {"real": np.zeros_like(missing), "positive": values <= 0,
                   "count": (values < 0) | (values != np.round(values))}[self.type]
        bad = ~missing & (~np.isfinite(values) | outside)
        if bad.any():
            more = f" (and {int(bad.sum()) - 1} more cells)" if bad.sum() > 1 else ""
            raise ValueError(f"{where}: column {self.name!r} ({self.type}) holds {cells[bad].iloc[0]!r}{more}, not "
                             f"{NEEDS[self.type]}; correct or blank those cells")
        return (values - self.mean) / self.std if self.type == "real" else values

    def decode(self, values: np.ndarray) -> pd.Series:
        """Encoded values (complete) in the column's units, levels and dtype; counts and integer dtypes rounded."""
        import pandas as pd

        if self.levels is not None:
            index = np.clip(np.rint(values), 0, len(self.levels) - 1).astype(int)
            return pd.Series([self.levels[i] for i in index], name=self.name).astype(self.dtype)
        if self.type == "real":
            values = values * self.std + self.mean
        elif self.type == "count":
            values = np.maximum(np.rint(values), 0)
        if pd.api.types.is_integer_dtype(self.dtype):
            values = np.rint(values)
        return pd.Series(values, name=self.name).astype(self.dtype)


@dataclasses.dataclass
class TableSchema:
    """The columns of a table, in order: how it is encoded for the model and decoded back."""

    columns: list[Column]

    def __post_init__(self) -> None:
        names = [column.name for column in self.columns]
        if not names:
            raise ValueError("a table schema needs at least one column")
        if doubled := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"a table schema names each column once, and names {', '.join(map(repr, doubled))} "
                             f"more than once")

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    def specs(self) -> tuple[str, ...]:
        """The column types as the model reads them (``ModelConfig.columns``)."""
        return tuple(column.spec for column in self.columns)

    def to_json(self) -> dict[str, Any]:
        return {"columns": [dataclasses.asdict(column) for column in self.columns]}

    @classmethod
    def from_json(cls, data: Any, where: str) -> TableSchema:
        """The schema :meth:`to_json` wrote, checked: a malformed one is one ValueError line starting ``where``."""
        keys = [field.name for field in dataclasses.fields(Column)]
        try:
            if not isinstance(data, dict) or set(data) != {"columns"} or not isinstance(data["columns"], list):
                raise ValueError(f"a table schema is an object {{'columns': [...]}}, got {data!r:.80}")
            for entry in data["columns"]:
                if not isinstance(entry, dict) or not set(entry) <= set(keys) or not {"name", "type"} <= set(entry):
                    raise ValueError(f"a column is an object with the keys {', '.join(keys)}, got {entry!r:.80}")
            return cls([Column(**entry) for entry in data["columns"]])
        except ValueError as error:
            raise ValueError(f"{where}: {error}; restore the file, or train a new run") from None

    def encode(self, frame: pd.DataFrame, name: str) -> torch.Tensor:
        """The rows of ``frame`` (its columns in any order) as float32 ``(N, C)`` in schema order, ``NaN`` where a
        cell is missing; refused, naming ``name``, the column and the value: other columns, an unseen level, a
        value that does not fit the column's type, or a row with every cell missing."""
        check_frame(frame, name, rows=False)
        missing = [column for column in self.names if column not in frame.columns]
        extra = [str(column) for column in frame.columns if column not in self.names]
        if missing or extra:
            parts = [f"{what} column(s) {', '.join(map(repr, columns))}"
                     for what, columns in (("missing", missing), ("extra", extra)) if columns]
            raise ValueError(f"{name} does not have the columns of the table the schema was made for: "
                             f"{'; '.join(parts)}; give it exactly the columns {', '.join(map(repr, self.names))}")
        encoded = np.stack([column.encode(frame[column.name], name) for column in self.columns], axis=1)
        if (empty := np.isnan(encoded).all(axis=1)).any():
            rows = frame.index[empty]
            raise ValueError(f"{name}: {len(rows)} row(s) have every cell missing, the first at index {rows[0]!r}; "
                             f"drop them, a row with no cell observed has nothing to learn from or score")
        return torch.from_numpy(encoded.astype(np.float32))

    def decode(self, x: torch.Tensor) -> pd.DataFrame:
        """Complete encoded rows ``(N, C)`` as the table they stand for: the original column names and order,
        units, level names and dtypes (for imputed and synthetic rows)."""
        import pandas as pd

        x = torch.as_tensor(x).detach().cpu().double().numpy()
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise ValueError(f"decoding needs encoded rows of shape (N, {len(self.columns)}), got {x.shape}")
        if np.isnan(x).any():
            raise ValueError(f"decoding writes complete rows, and {int(np.isnan(x).sum())} cells are NaN; impute "
                             f"them first")
        return pd.DataFrame({column.name: column.decode(x[:, i]) for i, column in enumerate(self.columns)})


def is_frame(data: Any) -> bool:
    """Whether ``data`` is a pandas DataFrame (without importing pandas: a DataFrame's maker has)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(data, pandas.DataFrame)


def is_table_file(dataset: str) -> bool:
    return Path(dataset).suffix.lower() in TABLE_SUFFIXES


def check_frame(frame: Any, name: str, rows: bool = True) -> None:
    """Refuse anything but a DataFrame with columns named by distinct strings (and, with ``rows``, some rows)."""
    if not is_frame(frame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    if not all(isinstance(column, str) for column in frame.columns):
        raise ValueError(f"{name} has columns not named by text ({list(frame.columns)[:5]!r:.80}); name them, e.g. "
                         f"frame.rename(columns=str)")
    if doubled := sorted({c for c in frame.columns if list(frame.columns).count(c) > 1}):
        raise ValueError(f"{name} has the column(s) {', '.join(map(repr, doubled))} more than once; rename them")
    if rows and (len(frame) == 0 or len(frame.columns) == 0):
        raise ValueError(f"{name} has no {'rows' if len(frame.columns) else 'columns'}; a table needs rows and "
                         f"columns to learn from")


def read_table(path: str | Path) -> pd.DataFrame:
    """A ``.csv`` (comma-separated, a header row of names; empty cells, ``NA`` and ``NaN`` are missing) or
    ``.parquet`` file as a DataFrame; a malformed file is refused in one line naming it (and the line)."""
    import pandas as pd

    path = Path(path).expanduser()
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"{path} is not a table file; pass a .csv or .parquet file")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a regular file; pass the path of a .csv or "
                                f".parquet file")
    if path.suffix.lower() == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from None
        except (ValueError, OSError) as error:
            raise ValueError(f"{path} is not a Parquet file pyarrow can read ({_first_line(error)}); write it "
                             f"again (DataFrame.to_parquet)") from None
    try:
        return pd.read_csv(path, na_values=list(MISSING), keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty; a CSV table starts with a header row of column names") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file in UTF-8; save the table as a UTF-8 CSV") from None
    except pd.errors.ParserError as error:
        line = re.search(r"line (\d+)", str(error))
        at = f" at line {line[1]}" if line else ""
        raise ValueError(f"{path} is not a well-formed CSV file{at} ({_first_line(error)}); give every line as "
                         f"many comma-separated cells as the header") from None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0].removeprefix("Error tokenizing data. ")


def table_provenance(path: str | Path, frame: pd.DataFrame) -> dict[str, Any]:
    """What was read, for ``config.json``: the file, its shape and the SHA-256 of its bytes."""
    path = Path(path).expanduser()
    return {"kind": "table", "path": str(path.resolve()), "shape": list(frame.shape),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def check_table_settings(config: Any) -> None:
    """Refuse, for a ``DataConfig`` of a table file, the settings of images, and ``column_types`` malformed or for
    other data."""
    if not is_table_file(config.dataset):
        if config.column_types is not None:
            raise SettingError("column_types", f"column_types gives the columns of a .csv or .parquet table, and "
                                               f"dataset={config.dataset!r} is not one; drop column_types")
        return
    parse_column_types(config.column_types)
    images = {"image_size": config.image_size is not None, "labeled": config.labeled is not None,
              "storage": config.storage == "stream", "binarize": config.binarize not in (None, "none")}
    if given := [name for name, used in images.items() if used]:
        raise SettingError(given[0], f"{given[0]}={getattr(config, given[0])!r} applies to images, and "
                                     f"dataset={config.dataset!r} is a table (held in memory, without labels); drop "
                                     f"{given[0]}")


def parse_column_types(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``NAME=TYPE,NAME=TYPE`` (the ``--column-types`` flag) as a dict, each type one of :data:`COLUMN_TYPES`; a
    mapping is checked as it is."""
    if not text:
        return {}
    if isinstance(text, Mapping):
        pairs = list(text.items())
    else:
        pairs = [tuple(part.strip() for part in item.split("=", 1)) for item in str(text).split(",")]
        if not all(len(pair) == 2 and all(pair) for pair in pairs):
            raise SettingError("column_types", f"column_types={text!r} is not NAME=TYPE,NAME=TYPE; write e.g. "
                                               f"column_types='age=count,sex=categorical'")
    types: dict[str, str] = {}
    for name, kind in pairs:
        if kind not in COLUMN_TYPES:
            raise SettingError("column_types", f"column_types gives the column {name!r} the unknown type {kind!r}; "
                                               f"choose one of {', '.join(COLUMN_TYPES)}{guess(kind, COLUMN_TYPES)}")
        if name in types:
            raise SettingError("column_types", f"column_types gives the column {name!r} a type twice; give it once")
        types[name] = kind
    return types


def infer_schema(frame: pd.DataFrame, train_rows: Sequence[int] | np.ndarray | torch.Tensor | None = None,
                 overrides: Mapping[str, str] | str | None = None, name: str = "the table") -> TableSchema:
    """Each column's type and encoding, from its observed values in ``train_rows`` (positions or a mask; all rows
    if None), with the types ``overrides`` gives by name; the levels of a category are those of every row. Inferred:
    numbers real (positive and count are never inferred: give them), but integers with at most :data:`MAX_LEVELS`
    values categorical; text, booleans and categories categorical; any two values binary. Refused in one
    line naming the column: an entirely missing one, one with one value only, an ID (a distinct value per row), a
    type that does not fit the values."""
    check_frame(frame, name)
    overrides = parse_column_types(overrides)
    if unknown := [column for column in overrides if column not in frame.columns]:
        columns = ", ".join(frame.columns[:8]) + (", ..." if len(frame.columns) > 8 else "")
        raise SettingError("column_types", f"column_types names the column {unknown[0]!r}, which {name} does not "
                                           f"have{guess(unknown[0], frame.columns)} (its columns: {columns})")
    rows = frame if train_rows is None else frame.iloc[np.asarray(train_rows)]
    if len(rows) == 0:
        raise ValueError(f"{name} has no training rows; a table needs rows to learn from")
    return TableSchema([_column(rows[column], frame[column], overrides.get(column), name)
                        for column in frame.columns])


def _column(cells: pd.Series, every: pd.Series, given: str | None, where: str) -> Column:
    """The column of ``cells`` (training rows), of the type ``given`` or inferred; its levels are those of
    ``every`` row of the table, so that held-out rows hold no level the model cannot score."""
    import pandas as pd

    label, dtype = f"{where}: column {cells.name!r}", _dtype_of_values(every)
    values = cells.dropna().infer_objects()
    if values.empty:
        raise ValueError(f"{label} is entirely missing{' in the training rows' if len(cells) else ''}; drop it")
    if pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(values):
        raise ValueError(f"{label} holds dates or times ({dtype}); convert them to numbers, or drop the column")
    distinct = every.dropna().infer_objects().unique()
    if len(values.unique()) == 1:
        raise ValueError(f"{label} has one value only ({distinct[0]!r}): it carries nothing; drop it")
    numbers_ = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    array = values.to_numpy(float) if numbers_ else None
    if array is not None and not np.isfinite(array).all():
        raise ValueError(f"{label} holds infinite values; correct or blank those cells")
    kind = given or _inferred_type(array, len(distinct), len(values), label)
    if kind in ("binary", "categorical"):
        if kind == "binary" and len(distinct) != 2:
            shown = ", ".join(repr(_level(value, label)) for value in distinct[:4]) + (", ..." if len(distinct) > 4
                                                                                      else "")
            raise ValueError(f"{label} is given the type binary but holds {len(distinct)} values ({shown}); "
                             f"binary takes two: choose categorical")
        levels = sorted((_level(value, label) for value in distinct), key=lambda v: (isinstance(v, str), v))
        return Column(str(cells.name), kind, levels=levels, dtype=dtype)
    if array is None:
        raise ValueError(f"{label} holds {values.iloc[0]!r}, not a number, and the type {kind} needs numbers; "
                         f"choose categorical")
    lowest = array.min()
    if kind == "positive" and lowest <= 0:
        raise ValueError(f"{label} is given the type positive but holds {lowest:g}; positive needs values > 0: "
                         f"choose real")
    if kind == "count" and (lowest < 0 or not np.array_equal(array, np.round(array))):
        example = lowest if lowest < 0 else array[array != np.round(array)][0]
        raise ValueError(f"{label} is given the type count but holds {example:g}; a count is a whole number >= 0: "
                         f"choose real")
    if kind == "real":
        return Column(str(cells.name), kind, mean=float(array.mean()), std=float(array.std()) or 1.0, dtype=dtype)
    return Column(str(cells.name), kind, dtype=dtype)


def _dtype_of_values(cells: pd.Series) -> str:
    """The dtype of a column's observed values: that of the column, but for whole numbers or booleans that missing
    cells made float or object (``int64``, ``bool``), so that the values written back are of their own type."""
    import pandas as pd

    values = cells.dropna().infer_objects()
    if pd.api.types.is_float_dtype(values) and len(values) and np.array_equal(values, np.round(values)):
        return "int64"
    return str(values.dtype if cells.isna().any() else cells.dtype)


def _inferred_type(array: np.ndarray | None, distinct: int, observed: int, label: str) -> str:
    """The type a column's observed values suggest (``array``: their numbers, None for text and booleans)."""
    integers = array is not None and np.array_equal(array, np.round(array))
    if distinct == 2:
        return "binary"
    if array is not None and not integers:
        return "real"
    if array is not None and distinct <= MAX_LEVELS:
        return "categorical"
    if distinct == observed:
        raise ValueError(f"{label} looks like an ID ({distinct} distinct values in {observed} rows): it carries "
                         f"nothing to learn; drop it, or give its type in column_types")
    return "categorical" if array is None else "real"


def _level(value: Any, label: str) -> Level:
    """A level as a JSON value: text, a bool, an int (a float with no fraction too) or a float."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Real) and math.isfinite(value):
        return int(value) if float(value).is_integer() else float(value)
    if isinstance(value, str):
        return str(value)
    raise ValueError(f"{label} holds {type(value).__name__} values such as {value!r:.40}; convert them to text or "
                     f"numbers")
