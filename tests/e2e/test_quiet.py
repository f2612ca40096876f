"""Quiet by default (issue #22 item 3): every command, run end to end as a user runs it, prints our
own lines and at most 3 that a library wrote; XMR_DEBUG=1 / --verbose bring the libraries' logs back;
a failing job still ends in its one error line.

"Ours" is decided conservatively: a line is ours only when it has one of the formats our commands
print (footers, tables, progress, the lines of cli/*.py and distributed/); everything else that is
not blank -- and anything with a library's marks (a log record's timestamp and level, a Ray worker's
"(name pid=...)" prefix, colour codes, Tune's boxes, a C++ source file) -- counts as theirs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servers import free_port

pytestmark = pytest.mark.slow
XMR = str(Path(sys.executable).with_name("xmr"))
MAX_FOREIGN = 3

# Marks of a library's line: any one makes a line theirs, whatever else it looks like.
THEIRS = re.compile(
    r"\x1b\[|^\(\w[\w.]* pid=|^\((raylet|autoscaler|gcs_server|monitor)\)|^\[?\d{4}[-/]\d\d[-/]\d\d"
    r"|\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b.* -- |\.(cc|cpp|h):\d+|[╭│╰├┤─]|Traceback|^\s+File \""
    r"|repeated \d+x across cluster|Tuner\.restore"
)
# The formats our commands print (cli/*.py, distributed/cluster.py, distributed/progress.py,
# sdml/evaluate.py and branch/report.py tables, tuning/console.py, serving's `xmr search` table).
FOOTER_KEYS = (
    "run directory", "metrics", "plots", "MLflow", "wall time", "training state", "epochs", "added",
    "index", "rows", "run", "gallery", "search", "metrics over", "results", "sweep directory",
    "best config", "plot", "map", r"map@\d+", r"precision@\d+",
)
OURS = [re.compile(p) for p in (
    # a footer line: its key padded to 14 (jobs) or 16 (the sweep) characters
    rf"^(?=(?:{'|'.join(FOOTER_KEYS)}) *: )(?:.{{14}}|.{{16}}): \S", r"^lr: \S",
    r"^(started a private local Ray|attached to Ray cluster at|using the Ray already running)",
    r"^\w[\w-]*\s+epoch\s+\d+/\d+\s",  # a progress line off a terminal
    r"^\s+\w[\w-]*\s+best epoch \d+/\d+, trained in",  # add-modality's per-modality line
    r"^query↓ target→", r"^-{10,}$", r"^mean mAP over \d+ ordered pairs",
    r"^\w[\w-]*(\s+(—|-?\d+\.\d+))+$",  # a row of an mAP or R@K table
    r"^R@K on the \w+ split", r"^model\s+i2t@1", r"^\s+\+ re-rank \(",
    r"^trial \d+/\d+ \w+", r"^\|.*\|$", r"^Schedule: trials ran ", r"^test \(chosen config, scored once\)",
    r"^re-ranking on the best trial",
    r"^query id\s+rank\s+item id\s+score$", r"^q\d+\s+\d+\s+\S+\s+-?\d+\.\d+$",
    r"^ready: http://", r"^stopped$", r"^xmr: (error|interrupted)",
    r"^workers: \w[\w-]* \d+", r"^\w[\w-]*: trained on \d+ workers$",  # sdml/launch.py, data-parallel
    r"^no cross-modal pair yet: ",
)]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def is_ours(line: str) -> bool:
    return not THEIRS.search(line) and any(p.search(line) for p in OURS)


def foreign(lines: list[str]) -> list[str]:
    """The visible lines we did not write (a line of colour codes alone shows nothing)."""
    return [line for line in lines if ANSI.sub("", line).strip() and not is_ours(line)]


def test_the_classifier_knows_library_lines_from_ours():
    theirs = [
        "[2026-12-07 09:59:31,235 E 26336 26336] core_worker.cc:2465: Actor with class name: "
        "'MapWorker(MapBatches(BatchEncoder))' has constructor arguments in the object store",
        "2026-12-07 10:00:22,566\tWARNING dataset.py:8601 -- Warning: The Ray cluster currently does "
        "not have any available CPUs.",
        "2026/12/07 09:56:49 INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
        "\x1b[36m(sdml_trial pid=26126)\x1b[0m Checkpoint successfully created at: Checkpoint(...)",
        "(raylet) Task _Worker.run failed. There are infinite retries remaining, so the task will be "
        "retried.",
        "│ Trial name               status          lam            lr   modality   │",
        "Resume experiment with: Tuner.restore(path=\"/tmp/q/sw/s5\", trainable=...)",
        "View detailed results here: /tmp/q/sw/s1", "Trial status: 2 PENDING",
        "Traceback (most recent call last):", "run: something odd",
    ]
    ours = [
        "started a private local Ray (2 CPUs, 0 GPUs)", "image  epoch    1/1  loss 4.5375 | val label 1.0161",
        "text             0.1658        —   0.1658", "run directory : /tmp/q/r1", "map@5         : 0.2667",
        "trial 1/2 dba1d_00000 audio: lam 0.2272, lr 6.097e-05 -> best_anchor_map 0.1869 (3/3 epochs)",
        "| 1 | dba1d_00000 | audio | 0.2272 |", "q0           1  item735  0.3573", "xmr: error: --x: bad",
        "lr: image 1e-4 (reference code: image rate)",
        "workers: audio 2 (DDP, gloo; 1 CPU each; one modality after the other)",
        "audio: trained on 2 workers", "no cross-modal pair yet: add a modality with `xmr add-modality`",
    ]
    assert foreign(theirs) == theirs
    assert foreign(ours) == []
    assert foreign(["", "   ", "\x1b[0m"]) == []


def env(**extra: str) -> dict[str, str]:
    """This environment, less what would make a command verbose or attach it to another Ray."""
    leave_out = ("XMR_DEBUG", "RAY_ADDRESS", "TQDM_DISABLE", "MLFLOW_LOGGING_LEVEL")
    out = {k: v for k, v in os.environ.items() if k not in leave_out}
    return {**out, **extra}


def xmr(*argv: str, expect: int = 0, **extra: str) -> list[str]:
    """Run ``xmr argv`` as a user would (stdout and stderr to one stream); its lines."""
    done = subprocess.run([XMR, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env(**extra), timeout=600)
    lines = done.stdout.splitlines()
    assert done.returncode == expect, "\n".join(lines[-40:])
    return lines


def assert_quiet(lines: list[str]) -> None:
    theirs = foreign(lines)
    assert len(theirs) <= MAX_FOREIGN, "lines we did not write:\n" + "\n".join(theirs)


def feature_table(path: Path, n: int, dim: int, prefix: str) -> str:
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    pq.write_table(pa.table({
        "id": pa.array([f"{prefix}{i}" for i in range(n)], pa.string()),
        "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
        "labels": pa.array([[i % 20] for i in range(n)], pa.list_(pa.int32())),
    }), path, row_group_size=250)
    return str(path)


@pytest.fixture(scope="module")
def sdml_run(tmp_path_factory, small_xmedia) -> tuple[Path, str, list[str]]:
    """`xmr train` with MLflow on (a new sqlite store: MLflow's INFO lines would show) and its lines."""
    root = tmp_path_factory.mktemp("quiet")
    run = str(root / "run")
    lines = xmr("train", "--data", small_xmedia, "--run", run, "--modality", "image", "--modality", "text",
                "--epochs", "1", "--dim", "32", "--batch-size", "20",
                "--tracking-uri", f"sqlite:///{root}/mlflow.db")
    return root, run, lines


def test_train(sdml_run):
    lines = sdml_run[2]
    assert_quiet(lines)
    assert any(line.startswith("mean mAP over 2 ordered pairs") for line in lines)


def test_train_data_parallel(small_xmedia, tmp_path):
    """W=2: Ray Train's own lines stay hidden, the PreemptionWatcher error its controller's core
    worker logs for every worker group among them (distributed/logs.py QUIET_FORWARDED)."""
    lines = xmr("train", "--data", small_xmedia, "--run", str(tmp_path / "run"), "--modality", "audio",
                "--epochs", "2", "--dim", "32", "--batch-size", "20", "--workers-per-modality", "2",
                "--no-tracking")
    assert not [line for line in lines if "PreemptionWatcher" in line], lines
    # Ray Train's placement-group cleaner prints a traceback of its own on a machine that runs several
    # Ray instances (the test session's, other jobs'): it cannot tell which is its own. Not counted.
    cleaner = re.compile(r"^\(PlacementGroupCleaner pid=\d+\)")
    assert_quiet([line for line in lines if not cleaner.match(ANSI.sub("", line))])
    assert "audio: trained on 2 workers" in lines


def test_add_modality(sdml_run, small_xmedia, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sdml_run[1], run)
    lines = xmr("add-modality", "--run", str(run), "--modality", "audio", "--data", small_xmedia,
                "--epochs", "1")
    assert_quiet(lines)
    assert any(line.startswith("added         : audio") for line in lines)


def test_train_pairs(small_pairs, tmp_path):
    lines = xmr("train-pairs", "--data", small_pairs, "--run", str(tmp_path / "run"), "--model", "vse",
                "--epochs", "1", "--set", "vse.embed_dim=32", "--set", "vse.word_dim=16", "--no-tracking")
    assert_quiet(lines)
    assert any(line.startswith("R@K on the test split") for line in lines)


def test_sweep_prints_a_line_per_trial_and_no_tune_console(small_xmedia, tmp_path):
    # checkpoint_every=1: a checkpoint per epoch, what made every trial log "Checkpoint successfully
    # created" and Tune warn about snapshotting.
    lines = xmr("sweep", "--model", "sdml", "--data", small_xmedia, "--modality", "audio",
                "--num-samples", "2", "--epochs", "2", "--set", "dim=32", "--set", "hidden=64",
                "--set", "batch_size=20", "--set", "checkpoint_every=1",
                "--storage", str(tmp_path / "sweeps"), "--name", "s", "--no-tracking")
    assert_quiet(lines)
    assert sum(line.startswith(("trial 1/2 ", "trial 2/2 ")) for line in lines) == 2, lines
    assert any(line.startswith("sweep directory : ") for line in lines)


def test_index_and_search(sdml_run, tmp_path):
    _, run, _ = sdml_run
    items = feature_table(tmp_path / "items.parquet", 1000, 64, "item")
    lines = xmr("index", "--run", run, "--modality", "image", "--table", items,
                "--out", str(tmp_path / "index"), "--batch-size", "256")
    assert_quiet(lines)
    assert any(line.startswith("rows          : 1000 image items") for line in lines)
    queries = feature_table(tmp_path / "q.parquet", 5, 80, "q")
    lines = xmr("search", "--run", run, "--query-modality", "text", "--query-table", queries,
                "--target", "image", "--index", str(tmp_path / "index"), "--k", "3")
    assert_quiet(lines)
    assert any(line.startswith("search        : 5 queries") for line in lines)


def test_serve_until_sigterm(sdml_run):
    _, run, _ = sdml_run
    port = free_port()
    proc = subprocess.Popen([XMR, "serve", "--run", run, "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in proc.stdout),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any(line.startswith("ready: ") for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, lines
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{url}/modalities", timeout=30) as r:
            dim = int(json.loads(r.read())["text"]["accepts"]["features"].split()[0])
        body = json.dumps({"query_modality": "text", "target_modality": "image", "k": 3,
                           "features": [0.1] * dim}).encode()
        request = urllib.request.Request(f"{url}/search", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            assert len(json.loads(r.read())["hits"]) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert_quiet(lines)
    assert "stopped" in lines, lines


def test_a_failing_job_still_shows_its_one_error_line(small_xmedia, tmp_path):
    # Fails once Ray is up (no GPUs): Ray's start and stop say nothing either.
    lines = xmr("train", "--data", small_xmedia, "--run", str(tmp_path / "run"), "--gpus-per-modality", "1",
                "--no-tracking", expect=2)
    assert_quiet(lines)
    errors = [line for line in lines if line.startswith("xmr: error: ")]
    assert len(errors) == 1 and "--gpus-per-modality 1 but this Ray cluster has no GPUs" in errors[0], lines


@pytest.mark.parametrize("how", ["XMR_DEBUG=1", "--verbose"])
def test_debug_or_verbose_brings_the_libraries_logs_back(sdml_run, small_xmedia, tmp_path, how):
    root = tmp_path
    argv = ["train", "--data", small_xmedia, "--run", str(root / "run"), "--modality", "image",
            "--epochs", "1", "--dim", "32", "--batch-size", "20", "--tracking-uri", f"sqlite:///{root}/mlflow.db"]
    lines = xmr(*argv, XMR_DEBUG="1") if how == "XMR_DEBUG=1" else xmr(*argv, "--verbose")
    # Ray's own "Started a local Ray instance" and MLflow's creation of its new store, at INFO.
    assert len(foreign(lines)) > len(foreign(sdml_run[2])), lines
    assert any("INFO" in line and "Started a local Ray instance" in line for line in lines), lines
    assert any("Creating initial MLflow database tables" in line for line in lines), lines
