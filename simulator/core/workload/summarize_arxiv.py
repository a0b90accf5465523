"""Regenerate arxiv_summary.json, the committed stand-in for the arXiv trace (not committed).

    python -m simulator.core.workload.summarize_arxiv [--trace CSV] [--out JSON]

The summary keeps the joint length distribution as
- prefill quantiles at PREFILL_KNOTS probabilities evenly spaced over [0, 1], and
- the trace's rows sorted by prefill and cut into PREFILL_BINS equal-count bins, with each bin's
  decode quantiles at DECODE_KNOTS evenly spaced probabilities.
Conditioning decode on the prefill bin keeps the dependence, including the trace's own cut at
4,096 total tokens (long prompts come with short outputs), which a Gaussian copula would blur.
Quantiles are rounded to 0.1 token. lengths.arxiv_summary_lengths samples from it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from ..paths import DEFAULT_SHARED_DATA_DIR
from .lengths import ARXIV_SUMMARY_PATH, read_length_trace

TRACE_NAME = "arxiv_summarization_llama2_tokens.csv"
SOURCE = (f"../shared/data/{TRACE_NAME}, a copy of microsoft/vidur data/processed_traces/"
          "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv (MIT): 28,257 "
          "arXiv-summarization requests in Llama-2 tokens, at most 4,096 tokens each")
PREFILL_KNOTS = 257
PREFILL_BINS = 64
DECODE_KNOTS = 65


def build_summary(trace: Path) -> dict:
    prefill, decode = read_length_trace(trace)
    order = np.argsort(prefill, kind="stable")
    bins = np.array_split(decode[order], PREFILL_BINS)
    return {
        "source": SOURCE,
        "source_sha256": hashlib.sha256(trace.read_bytes()).hexdigest(),
        "generated_by": "python -m simulator.core.workload.summarize_arxiv",
        "method": (f"prefill quantiles at {PREFILL_KNOTS} evenly spaced probabilities; rows "
                   f"sorted by prefill, cut into {PREFILL_BINS} equal-count bins; per bin, decode "
                   f"quantiles at {DECODE_KNOTS} evenly spaced probabilities (numpy linear "
                   "quantiles, rounded to 0.1)"),
        "rows": int(prefill.size),
        "prefill_quantiles": _rounded(np.quantile(prefill, np.linspace(0, 1, PREFILL_KNOTS))),
        "decode_quantiles_by_prefill_bin": [
            _rounded(np.quantile(b, np.linspace(0, 1, DECODE_KNOTS))) for b in bins],
    }


def _rounded(values: np.ndarray) -> list[int | float]:
    # Whole numbers without ".0" keep the file small; json reads both back as the same value.
    return [int(v) if v.is_integer() else v for v in (round(float(x), 1) for x in values)]


def write_summary(summary: dict, out: Path) -> None:
    """One key per line and one bin per line, so a regenerated file diffs readably."""
    lines = []
    for key, value in summary.items():
        if key == "decode_quantiles_by_prefill_bin":
            rows = ",\n".join(f"  {json.dumps(row)}" for row in value)
            lines.append(f' "{key}": [\n{rows}\n ]')
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    out.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_SHARED_DATA_DIR / TRACE_NAME)
    parser.add_argument("--out", type=Path, default=ARXIV_SUMMARY_PATH)
    args = parser.parse_args(argv)
    write_summary(build_summary(args.trace), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) from {args.trace}")


if __name__ == "__main__":
    main()
