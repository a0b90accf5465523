"""The memory a simulation will need, estimated before it starts, so that an oversized request
fails at once with the number instead of swapping for minutes or being killed.

Peak resident memory grows with the requests and, mostly, with the output tokens: every token
becomes a row of the token table, built once the run is over and then encoded by the parquet
writer. Measured with `/usr/bin/time -v python -m simulator workload.num_requests=N` (arxiv
lengths, about 300 output tokens per request) when the recorder still held every token: 5,000
requests -> 324 MB, 20,000 -> 784 MB; fixed lengths with 2 output tokens, 100,000 requests ->
240 MB. The constants below cover those with margin; today's runs need less (10,000 arXiv
requests: about 275 MB; 100,000: 1.6 GB).
"""
from __future__ import annotations

import os
from pathlib import Path


class NotEnoughMemoryError(ValueError):
    """The estimated peak memory of a run exceeds what the machine has available."""


BASE_BYTES = 200e6             # interpreter, numpy, pandas, pyarrow, the cost model
BYTES_PER_REQUEST = 1_000      # a Request object and its rows in the request table
BYTES_PER_OUTPUT_TOKEN = 100   # its token-table row and its share of the batch table


def estimated_peak_bytes(num_requests: int, output_tokens: int) -> float:
    return BASE_BYTES + BYTES_PER_REQUEST * num_requests + BYTES_PER_OUTPUT_TOKEN * output_tokens


def check_memory(num_requests: int, output_tokens: int = 0) -> None:
    """Raise one line when the estimate exceeds the memory available now. Before the workload is
    drawn `output_tokens` is unknown (0): the check then bounds the requests alone."""
    need = estimated_peak_bytes(num_requests, output_tokens)
    available = available_bytes()
    if need <= available:
        return
    per_request = BYTES_PER_REQUEST + BYTES_PER_OUTPUT_TOKEN * output_tokens / max(num_requests, 1)
    fits = max(int((available - BASE_BYTES) / per_request), 0)
    if output_tokens:
        what, fix = f"with {output_tokens:,} output tokens ", f"set workload.num_requests={fits} or less"
    else:  # output tokens not drawn yet: `fits` ignores them, so the real limit is lower
        what, fix = "", f"lower workload.num_requests well below {fits}"
    raise NotEnoughMemoryError(f"workload.num_requests={num_requests}: the simulation {what}needs about "
                               f"{_gb(need)} of memory and {_gb(available)} is available; {fix} "
                               "or use a machine with more memory")


def available_bytes() -> int:
    """Memory available to this process now: the system's available memory, or what is left of a
    container's (cgroup v2) limit when that is lower; the total memory where neither is readable."""
    candidates = []
    meminfo = _read("/proc/meminfo")
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            candidates.append(int(line.split()[1]) * 1024)
    limit, used = _read("/sys/fs/cgroup/memory.max").strip(), _read("/sys/fs/cgroup/memory.current").strip()
    if limit.isdigit() and used.isdigit():
        candidates.append(int(limit) - int(used))
    if not candidates:  # macOS and others: the physical memory
        candidates.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return min(candidates)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:,.1f} GB"
