"""Columns (name -> 1-D array) to CSV and Parquet files, without pandas.

A simulation writes its tables through these two functions so that the everyday run never pays
pandas' import (a third of a second, more than the rest of start-up). The files read back with
`pandas.read_csv` / `read_parquet` as the DataFrame writers' did: CSV cells as pandas writes them
(floats in shortest round-trip form, NaN and None as empty cells, True/False), Parquet through
pyarrow (snappy compression) from numpy's buffers.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def write_csv(path: str | Path, columns: Mapping[str, Any]) -> None:
    """One row per index of the (equal-length) columns, a header of their names."""
    names = list(columns)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(zip(*(_cells(np.asarray(columns[name])) for name in names)))


def _cells(values: np.ndarray) -> list:
    """A column as Python scalars (whose str() is repr, as pandas writes floats); NaN and None empty."""
    cells = values.tolist()
    if values.dtype.kind == "f":
        for i in np.flatnonzero(np.isnan(values)).tolist():
            cells[i] = ""
    elif values.dtype.kind == "O":
        cells = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in cells]
    return cells


def write_parquet(path: str | Path, columns: Mapping[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(columns)
    arrays = [_arrow_array(np.asarray(columns[name])) for name in names]
    pq.write_table(pa.Table.from_arrays(arrays, names=names), str(path))


def _arrow_array(values: np.ndarray) -> Any:
    """Numbers and booleans wrap numpy's buffer (pyarrow's converter would import pandas to look
    for a Series; NaN stays NaN, not null, as with the converter)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        bits = pa.py_buffer(np.packbits(values, bitorder="little"))
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, bits])
    if values.dtype.kind in "iuf":
        return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])
    return pa.array(values)  # strings and other objects: pyarrow's own converter
