"""Quiet by default (issue #22 item 3): every command, run end to end as a user runs it, prints our
own lines and at most 3 that a library wrote (tests/e2e/quiet_lines.py says which are ours);
XMR_DEBUG=1 / --verbose bring the libraries' logs back; a failing job still ends in its one error line.

The README's jobs (train, data-parallel train, add-modality, train-pairs, both sweeps, index and
search) are checked quiet where the README test runs them (tests/e2e/test_readme.py), on a fresh
MLflow store too; this file covers what the README does not run: `xmr train` with a new sqlite store,
`xmr serve` until SIGTERM, a failing job, and the switches that bring the logs back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from quiet_lines import assert_quiet, foreign
from servers import free_port

pytestmark = pytest.mark.slow
XMR = str(Path(sys.executable).with_name("xmr"))


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
        "=" * 78, "NOTE: no --data given: using SYNTHETIC XMedia-shaped data (not real features;",
        "      mAP here says nothing about XMedia). Cached at /tmp/r/data",
        "This was the 1-epoch demo. The paper's full setting is 200 epochs:",
        "  python jobs/train_xmedia.py --epochs 200            (synthetic XMedia-shaped data)",
        "text-00000     1  image-00008  0.0926", "... 177 more queries (--out FILE writes them all)",
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
