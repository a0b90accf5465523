"""The run directory's CSV and Parquet writers: what pandas would write and read back, without
importing pandas."""
import subprocess
import sys

import numpy as np
import pandas as pd

from simulator.table_files import write_csv, write_parquet

COLUMNS = {
    "id": np.arange(4, dtype=np.int64),
    "time": np.array([0.1, np.nan, 1e-05, 123456789.125]),
    "ok": np.array([True, False, True, False]),
    "small": np.array([1, 2, 3, 4], dtype=np.int32),
    "label": np.array(["a", "b,c", None, 'say "x"'], dtype=object),
}


def test_csv_is_what_pandas_writes(tmp_path):
    write_csv(tmp_path / "ours.csv", COLUMNS)
    pd.DataFrame(COLUMNS).to_csv(tmp_path / "pandas.csv", index=False)
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


def test_parquet_reads_back_as_the_columns(tmp_path):
    numeric = {k: v[::-1] if k == "time" else v for k, v in COLUMNS.items() if k != "label"}  # a strided view too
    write_parquet(tmp_path / "t.parquet", numeric)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), pd.DataFrame(numeric))


def test_writing_numbers_does_not_import_pandas(tmp_path):
    code = ("import sys, numpy as np; from simulator.table_files import write_csv, write_parquet; "
            f"write_parquet({str(tmp_path / 'a.parquet')!r}, {{'x': np.arange(3.0), 'b': np.ones(3, bool)}}); "
            f"write_csv({str(tmp_path / 'a.csv')!r}, {{'x': np.arange(3.0)}}); "
            "assert 'pandas' not in sys.modules, 'pandas was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
