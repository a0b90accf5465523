"""Every way a user can get a command wrong ends as one line and a non-zero exit, with nothing
half-written; Ctrl-C is exit 130 with no Ray process left; Ray is local unless a cluster is named.

The cases are issue 13's list, run as a user types them (add new ones to CASES). Most run the
command's entry point in this process (a subprocess start costs seconds per case); Ctrl-C and the
Ray cluster need real processes.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from simulator.cli import run_command
from simulator.core.paths import REPO_ROOT
from simulator.run_dir import check_output_dir, staged_dir

PYTHON = sys.executable


def _main(command: str):
    if command == "simulator":
        from simulator.__main__ import main
    elif command == "fig1":
        from experiments.fig1 import main
    else:
        from profiler.predict import main
    return lambda: run_command(main)


def run_in_process(command: str, args: list[str], capsys) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of `python -m <command> <args>`, run in this process."""
    argv = sys.argv
    sys.argv = [command, *args]
    try:
        _main(command)()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err.strip().splitlines()


def _trace(tmp: Path, prefill: str) -> Path:
    path = tmp / "trace.csv"
    path.write_text(f"num_prefill_tokens,num_decode_tokens\n100,20\n{prefill},30\n")
    return path


# (command, overrides, text the one line must contain). {tmp} is a fresh directory per case.
CASES = [
    ("simulator", ["+engine.foo=1"], "+engine.foo: no config declares this key"),
    ("simulator", ["+parallel.pp=2"], "+parallel.pp: no config declares this key"),
    ("simulator", ["engine.foo=1"], "engine.foo: unknown config key; known keys under engine"),
    ("simulator", ["scheduler=vlm"], "scheduler=vlm: no such config; choose one of faster_transformer, orca, sarathi, vllm"),
    ("simulator", ["hardware=tpu_v5"], "hardware=tpu_v5: no such config; choose one of a100_80gb_pcie_nvlink"),
    ("simulator", ["workload.max_tokens=0"], "workload.max_tokens = 0"),
    ("simulator", ["workload.num_requests=1.5"], "workload.num_requests = 1.5"),
    ("simulator", ["workload.num_requests=1000000000"], "GB of memory"),
    ("simulator", ["workload.num_requests=${nope}"], "workload.num_requests"),
    ("simulator", ["~engine"], "lacks the section engine"),
    ("simulator", ["overwrite=3"], "overwrite=3"),
    ("simulator", ["workload=arxiv_trace", "workload.lengths.path={tmp}"], "is a directory"),
    ("simulator", ["workload=arxiv_trace", "workload.lengths.path={trace_100.5}"], "'100.5' is not a whole number"),
    ("simulator", ["output_dir={tmp}/file/run"], "is a file"),
    ("simulator", ["fig1.qps=[1,2"], "cannot parse an override"),
    ("fig1", ["fig1.qps=[]"], "fig1.qps=[] is empty"),
    ("fig1", ["fig1.qps=[0.5,abc]"], "fig1.qps[1]='abc' must be a number > 0"),
    ("fig1", ["fig1.num_requests=0"], "fig1.num_requests=0"),
    ("fig1", ["+fig1.foo=1"], "+fig1.foo: no config declares this key"),
    ("fig1", ["mode=gpu"], "mode='gpu' is unknown"),
    ("fig1", ["ray.num_cpus=0"], "ray.num_cpus=0 must be a positive integer"),
    ("predict", ["profiler.decode_context=-5"], "profiler.decode_context=-5 must be a token count >= 1"),
]


@pytest.mark.parametrize("command,args,expected", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_each_bad_input_is_one_line_and_exit_2(command, args, expected, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    trace = _trace(tmp_path, "100.5")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{trace_100.5}", str(trace)) for a in args]
    out_dir = tmp_path / "out"
    extra = [] if command == "predict" else [f"hydra.run.dir={tmp_path / 'hydra'}"]
    if command != "predict" and not any(a.startswith("output_dir=") for a in args):
        extra.append(f"output_dir={out_dir}")
    code, lines = run_in_process(command, [*args, *extra], capsys)
    assert code == 2, (args, lines)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (args, lines)
    assert not list(tmp_path.rglob("summary.json")), "a run that failed left a summary behind"


def test_an_earlier_run_is_kept_unless_overwrite(tmp_path, capsys):
    args = ["workload.num_requests=8", f"hydra.run.dir={tmp_path}"]
    assert run_in_process("simulator", args, capsys)[0] == 0
    first = (tmp_path / "summary.json").read_text()
    code, lines = run_in_process("simulator", [*args, "workload.seed=7"], capsys)
    assert code == 2 and "already holds" in lines[0] and "overwrite=true" in lines[0], lines
    assert (tmp_path / "summary.json").read_text() == first
    assert run_in_process("simulator", [*args, "workload.seed=7", "overwrite=true"], capsys)[0] == 0
    assert (tmp_path / "summary.json").read_text() != first


def test_overwrite_refuses_files_it_did_not_write_and_removes_the_mark_first(tmp_path):
    old = tmp_path / "old"
    (old / "1a_vllm").mkdir(parents=True)
    (old / "1a_vllm" / "summary.json").write_text("{}")
    (old / "summary.json").write_text("{}")
    (old / ".hydra").mkdir()  # hydra's own record: never in the way
    with pytest.raises(FileExistsError, match="already holds 1a_vllm, summary.json"):
        check_output_dir(old, overwrite=False)
    check_output_dir(old, overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == [".hydra"]


def test_an_interrupted_write_leaves_nothing_that_looks_finished(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(final) as out:
            (out / "requests.csv").write_text("x")
            raise KeyboardInterrupt
    assert not final.exists() and not list(tmp_path.iterdir())
    final.mkdir()  # hydra made it, with its records
    with staged_dir(final) as out:
        (out / "requests.csv").write_text("x")
        (out / "summary.json").write_text("{}")
        assert not (final / "summary.json").exists()  # only once everything is written
    assert sorted(p.name for p in final.iterdir()) == ["requests.csv", "summary.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_token_table_write_fails_the_run_and_leaves_nothing(tmp_path, monkeypatch):
    # tokens.parquet is written on a thread beside the other files: its error must still be the
    # run's, and the run directory must not appear
    from simulator import outputs
    from simulator.core.request import Request
    from simulator.core.schedulers import SchedulerConfig, make_scheduler
    from simulator.engine import simulate

    requests = [Request(i, 0.1 * i, 20, 5) for i in range(8)]
    scheduler = make_scheduler("sarathi", SchedulerConfig(max_num_seqs=4, max_model_len=64, block_size=4,
                                                          chunk_size=16), 64)
    tables = simulate(requests, scheduler, lambda batch: 0.01).finalize()
    assert tables.tokens is not None
    write_parquet = outputs.write_parquet

    def failing(path, columns):
        if Path(path).name == "tokens.parquet":
            time.sleep(0.2)  # still writing when the other files are done
            raise OSError(28, "No space left on device")
        write_parquet(path, columns)

    monkeypatch.setattr(outputs, "write_parquet", failing)
    with pytest.raises(OSError, match="No space left"):
        outputs.write_run(tmp_path / "run", tables, {"mode": "sim"})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Real processes: Ctrl-C and Ray


def _session_processes(sid: int, marker: str | None = None) -> list[tuple[int, str]]:
    """Live processes of session `sid` (and, with `marker`, any whose command line names it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
            in_session = os.getsid(pid) == sid
        except (OSError, IndexError):
            continue
        if state != "Z" and (in_session or (marker and marker in cmdline)):
            found.append((pid, cmdline))
    return found


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="finds leftover processes through /proc (Linux)")


def _sigint_as_in_a_terminal() -> None:
    """A job started in the background (`cmd &`, nohup) inherits SIGINT ignored, and Python then
    never raises KeyboardInterrupt: give the command the default a terminal's foreground job has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@needs_proc
@pytest.mark.parametrize("phase", ["importing", "starting Ray"])
def test_ctrl_c_exits_130_with_one_line_and_no_ray_process_left(phase, tmp_path):
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group."""
    proc = subprocess.Popen([PYTHON, "-m", "experiments.fig1", "fig1.num_requests=4", "fig1.qps=[1.0]",
                             "fig1.kv_bound_prefill_scale=null",
                             f"output_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)
    deadline = time.monotonic() + 120
    if phase == "importing":
        time.sleep(0.3)
    else:  # the moment Ray's first process (its GCS server) appears
        while proc.poll() is None and time.monotonic() < deadline and \
                len(_session_processes(proc.pid)) < 2:
            time.sleep(0.02)
    assert proc.poll() is None, "fig1 ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err[-2000:]
    time.sleep(1)  # Ray's processes exit asynchronously after shutdown
    assert _session_processes(proc.pid) == [], "Ray processes left running"
    assert not list(tmp_path.rglob("summary.json"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A real Ray head on a private port and temp dir; stopped by its own PIDs (never `ray stop`,
    which would stop every Ray on the machine)."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    port = _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    ray_bin = str(Path(PYTHON).with_name("ray"))
    try:
        subprocess.run([ray_bin, "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}", "--num-cpus=2",
                        "--include-dashboard=false", "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}", env
    finally:
        _stop(temp_dir)


def _stop(temp_dir: str) -> None:
    cluster = {pid for pid, _ in _session_processes(-1, marker=temp_dir)}
    for entry in os.listdir("/proc"):  # and their children (workers, agents)
        try:
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1].split()[1]) in cluster:
                cluster.add(int(entry))
        except (OSError, IndexError):
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in cluster:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(3 if sig == signal.SIGTERM else 0)


@needs_proc
def test_ray_is_local_unless_named_and_a_cluster_sweep_writes_where_it_was_run(ray_cluster, tmp_path):
    address, env = ray_cluster
    sweep = ["-m", "simulator", "-m", "scheduler=vllm,sarathi", "workload.num_requests=4"]
    # A cluster that Ray would join by itself (RAY_ADDRESS): a plain local sweep must not attach.
    local = subprocess.run([PYTHON, *sweep, f"hydra.sweep.dir={tmp_path / 'local'}"], cwd=REPO_ROOT,
                           env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-2000:]
    assert len(list((tmp_path / "local").glob("*/summary.json"))) == 2
    # The README's cluster sweep, run from a directory of the user's: its runs land there.
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    joined = subprocess.run([PYTHON, *sweep, f"hydra.launcher.address={address}"], cwd=user_dir,
                            env={**env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                            timeout=300)
    assert joined.returncode == 0, joined.stderr[-2000:]
    assert len(list(user_dir.glob("multirun/*/*/*/summary.json"))) == 2, joined.stdout[-2000:]
    assert "sweep summary (2 runs)" in joined.stdout
    assert len(list(user_dir.glob("multirun/*/*/sweep_report.html"))) == 1


def test_a_sweep_checks_every_job_before_any_starts(tmp_path, capsys):
    """The second job's typo stops the sweep before Ray starts or any job runs."""
    code, lines = run_in_process("simulator", ["-m", "workload.num_requests=4", "scheduler=vllm,sarathi",
                                               "+engine.x=1,2", f"hydra.sweep.dir={tmp_path}"], capsys)
    assert code == 2 and len(lines) == 1 and "+engine.x: no config declares this key" in lines[0], lines
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "a job directory was made"
