"""The artifact-format output files of `compat: reference` and the Chrome-trace writer."""
from __future__ import annotations

import json

import pandas as pd

from simulator.chrome_trace import write_chrome_trace


def test_chrome_trace_has_a_span_per_batch_on_one_track_per_replica(tmp_path):
    batches = pd.DataFrame({"start": [0.0, 0.5, 0.25], "end": [0.5, 1.0, 0.75], "replica": [0, 0, 1],
                            "num_prefill_tokens": [100, 0, 7], "num_decode_tokens": [0, 2, 1],
                            "num_tokens": [100, 2, 8], "batch_size": [1, 2, 2]})
    events = json.loads(write_chrome_trace(batches, tmp_path / "t" / "chrome_trace.json").read_text())
    assert [(e["ph"], e["pid"], e["tid"]) for e in events] == [("X", 0, 0), ("X", 0, 0), ("X", 1, 0)]
    assert [(e["ts"], e["dur"]) for e in events] == [(0.0, 500000.0), (500000.0, 500000.0), (250000.0, 500000.0)]
    assert events[1]["args"] == {"batch_size": 2, "num_batched_tokens": 2, "num_batched_prompt_tokens": 0,
                                 "num_batched_output_tokens": 2}
    single = json.loads(write_chrome_trace(batches.drop(columns="replica"), tmp_path / "one.json").read_text())
    assert {e["pid"] for e in single} == {0}
