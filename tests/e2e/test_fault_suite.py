"""Faults survived, as users meet them (#14 item 5): each job runs as its own ``xmr`` process (with
its own private Ray), in its own session so that Ctrl-C reaches the whole job as a terminal sends
it (SIGINT to the process group), and the driver can be SIGKILLed alone.

Every test then continues the job with the documented command and checks the run is complete.

The full disk is a small tmpfs. In `make test` it is mounted inside a user + mount namespace of this
user (no root, nothing visible outside: the job runs in the namespace, this process reaches its files
through /proc/<pid>/root); `make test-system` (root) repeats the test on a tmpfs mounted for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from servers import MlflowServer

from scalable_xmr.store.run_store import RunStore

LONG = ["--epochs", "60", "--dim", "32", "--batch-size", "20", "--checkpoint-every", "1", "--no-progress"]
SHORT = ["--epochs", "2", "--dim", "32", "--batch-size", "20", "--no-progress"]
FAULT_KINDS: dict[str, str] = {}  # test name -> fault kind (RELIABILITY.md lists them)


def fault(kind: str):
    def mark(fn):
        FAULT_KINDS[fn.__name__] = kind
        return fn
    return mark


class Job:
    """``xmr ARGS`` in its own session; stdout/stderr collected to files."""

    def __init__(self, args: list[str], logs: Path, env: dict | None = None, wrap: Sequence[str] = (),
                 faults: dict[str, int] | None = None):
        """``wrap``: a prefix that execs the command elsewhere (``nsenter ... --``), pid unchanged;
        ``faults``: this job's fault plan (scalable_xmr/faults.py), none by default."""
        logs.mkdir(parents=True, exist_ok=True)
        self.out, self.err = logs / "stdout.txt", logs / "stderr.txt"
        env = {**os.environ, "TQDM_DISABLE": "1", **(env or {})}
        env.pop("XMR_FAULTS", None)
        env.pop("RAY_ADDRESS", None)
        if faults:
            (logs / "faults.json").write_text(json.dumps(faults))
            env["XMR_FAULTS"] = str(logs / "faults.json")
        self.proc = subprocess.Popen([*wrap, str(Path(sys.executable).with_name("xmr")), *args],
                                     stdout=open(self.out, "w"), stderr=open(self.err, "w"),
                                     start_new_session=True, env=env)

    def wait_for(self, predicate, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"job exited ({self.proc.returncode}) before {what}: {self.text()}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}: {self.text()}")

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.reap()

    def reap(self) -> None:
        """Whatever the job left running (a private Ray after its driver was SIGKILLed) is ended."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)

    def text(self) -> str:
        return f"stdout:\n{self.out.read_text()[-3000:]}\nstderr:\n{self.err.read_text()[-3000:]}"


def run_xmr(args: list[str], logs: Path, env: dict | None = None,
            wrap: Sequence[str] = ()) -> tuple[int, str, str]:
    job = Job(args, logs, env, wrap)
    code = job.finish()
    return code, job.out.read_text(), job.err.read_text()


def _epoch_of(store: RunStore, modality: str) -> int:
    """The epoch the modality's progress reached, from its checkpoint's existence (cheap poll)."""
    return 1 if store.checkpoint_path(modality).is_file() else 0


# Each modality stops after its checkpoint of epoch 2 until the driver is killed (faults.py "hold"):
# the kill always comes mid-training, however fast the 60 epochs would otherwise run.
HOLD_BOTH = {"image/hold": 2, "text/hold": 2}


def _train_args(data: str, run: Path, *extra: str) -> list[str]:
    return ["train", "--data", data, "--run", str(run), "--modality", "image", "--modality", "text",
            "--no-tracking", *extra]


@fault("driver SIGKILL mid-training, then --resume")
def test_driver_sigkill_then_resume_finishes_from_checkpoints(tmp_path, small_xmedia):
    run = tmp_path / "run"
    store = RunStore(run)
    job = Job(_train_args(small_xmedia, run, *LONG), tmp_path / "first", faults=HOLD_BOTH)
    job.wait_for(lambda: all(_epoch_of(store, m) for m in ("image", "text")), "both checkpoints")
    time.sleep(1.0)
    os.kill(job.proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer would
    job.finish()
    assert store.read().status == "running"  # left as it was: no reader takes it for finished
    assert (run / ".lock").is_file()  # the dead driver's lock file stays behind (stale)
    code, out, err = run_xmr(_train_args(small_xmedia, run, *LONG, "--resume"), tmp_path / "resume")
    assert code == 0, err
    assert "took over a stale lock" in err
    meta = store.read_finished()
    for m in ("image", "text"):  # each continued from its checkpoint (epoch 2, or 1 if caught saving 2)
        assert meta.modalities[m]["resumed_at_epoch"] in ([1], [2]), meta.modalities[m]
    assert not (run / ".lock").exists()


@fault("Ctrl-C (SIGINT to the job's process group) of xmr train, then --resume")
def test_ctrl_c_of_train_says_how_to_resume_and_resume_finishes(tmp_path, small_xmedia):
    run = tmp_path / "run"
    store = RunStore(run)
    job = Job(_train_args(small_xmedia, run, *LONG), tmp_path / "first", faults=HOLD_BOTH)
    job.wait_for(lambda: _epoch_of(store, "image"), "a checkpoint")
    job.signal_group(signal.SIGINT)
    assert job.finish() == 130, job.text()
    err = job.err.read_text()
    assert f"xmr: interrupted; {run} is kept" in err and "--resume" in err, err
    assert "Traceback" not in err, err
    meta = store.read()
    assert meta.status == "failed" and meta.error.startswith("KeyboardInterrupt")
    code, _, err = run_xmr(_train_args(small_xmedia, run, *LONG, "--resume"), tmp_path / "resume")
    assert code == 0, err
    assert store.read_finished().finished_modalities() == ["image", "text"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@fault("Ctrl-C of xmr add-modality, then the same command again")
def test_ctrl_c_of_add_modality_leaves_the_run_unchanged(tmp_path, small_xmedia):
    run = tmp_path / "run"
    code, _, err = run_xmr(_train_args(small_xmedia, run, *SHORT), tmp_path / "train")
    assert code == 0, err
    before = _snapshot(run)
    add = ["add-modality", "--run", str(run), "--modality", "audio", "--data", small_xmedia,
           "--batch-size", "20", "--checkpoint-every", "1", "--no-progress"]
    job = Job([*add, "--epochs", "60"], tmp_path / "add", faults={"audio/hold": 2})
    job.wait_for(lambda: any((run / ".staging").rglob("last.pt")), "the new modality's first checkpoint")
    job.signal_group(signal.SIGINT)
    assert job.finish() == 130, job.text()
    assert f"{run} is unchanged" in job.err.read_text()
    assert _snapshot(run) == before  # byte for byte, staging gone
    assert not (run / ".staging").exists() or not any((run / ".staging").iterdir())
    code, _, err = run_xmr([*add, "--epochs", "2"], tmp_path / "again")
    assert code == 0, err
    assert "audio" in RunStore(run).read_finished().finished_modalities()


@fault("Ctrl-C of xmr sweep, then --resume")
def test_ctrl_c_of_a_sweep_says_how_to_resume_and_resume_finishes(tmp_path, small_xmedia):
    storage = tmp_path / "sweeps"
    # Both trials run when Ctrl-C comes (it reaches their workers too): the case that used to end
    # with "no usable trial for None" instead of saying how to resume.
    args = ["sweep", "--model", "sdml", "--data", small_xmedia, "--modality", "audio", "--num-samples", "2",
            "--epochs", "30", "--scheduler", "fifo", "--max-concurrent", "2", "--storage", str(storage),
            "--name", "s", "--set", "dim=32", "--set", "batch_size=20", "--set", "checkpoint_every=1",
            "--no-tracking", "--quiet"]
    job = Job(args, tmp_path / "first")
    job.wait_for(lambda: len({p.parent for p in (storage / "s").glob("*/checkpoint_*")}) >= 2,
                 "a checkpoint of each trial")
    job.signal_group(signal.SIGINT)
    code = job.finish()
    text = job.out.read_text() + job.err.read_text()
    assert "no usable trial" not in text, text
    assert "--name s --resume" in text, text
    assert code in (0, 130), text
    assert json.loads((storage / "s" / "sweep.json").read_text())["status"] == "interrupted"
    code, out, err = run_xmr(["sweep", "--model", "sdml", "--storage", str(storage), "--name", "s",
                              "--resume", "--no-tracking", "--quiet"], tmp_path / "resume")
    assert code == 0, out + err
    assert json.loads((storage / "s" / "sweep.json").read_text())["status"] == "finished"
    assert (storage / "s" / "best.json").is_file()
    for trial in (storage / "s").glob("sdml_trial_*"):  # every trial trained all its epochs
        last = json.loads((trial / "result.json").read_text().splitlines()[-1])
        assert last["training_iteration"] == 30, trial.name


@fault("MLflow tracking server killed mid-run, then xmr track")
def test_mlflow_server_killed_mid_run_training_finishes_and_track_catches_up(tmp_path, small_xmedia):
    from mlflow.tracking import MlflowClient

    server = MlflowServer(tmp_path / "mlflow").start()
    run = tmp_path / "run"
    store = RunStore(run)
    try:
        args = ["train", "--data", small_xmedia, "--run", str(run), "--modality", "image", "--modality",
                "text", "--tracking-uri", server.uri, "--experiment", "faults", *LONG[:1], "30", *LONG[2:]]
        job = Job(args, tmp_path / "train")
        job.wait_for(lambda: _epoch_of(store, "image"), "a checkpoint")
        server.kill()  # the tracking server goes away while the actors train
        assert job.finish() == 0, job.text()
    finally:
        server.kill()
    out, err = job.out.read_text(), job.err.read_text()
    assert "MLflow tracking failed" in err and "results are safe in the run store" in err, err
    assert f"`xmr track --run {run}` logs it once MLflow is reachable" in out, out
    meta = store.read_finished()
    assert store.metrics_path.is_file() and sorted(meta.finished_modalities()) == ["image", "text"]

    again = MlflowServer(tmp_path / "mlflow").start()  # the same store, back up
    try:
        code, out, err = run_xmr(["track", "--run", str(run), "--tracking-uri", again.uri,
                                  "--experiment", "faults"], tmp_path / "track")
        assert code == 0, err
        parent = store.read().mlflow["parent_run_id"]
        assert f"run {parent})" in out
        client = MlflowClient(tracking_uri=again.uri)
        exp = client.get_experiment_by_name("faults").experiment_id
        children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
        assert sorted(r.data.tags["modality"] for r in children) == ["image", "text"]
        history = client.get_metric_history(children[0].info.run_id, "loss/train")
        assert [h.step for h in history] == list(range(1, 31))
        assert client.get_run(parent).data.metrics["map/mean"] == pytest.approx(
            json.loads(store.metrics_path.read_text())["map_mean"])
        assert {"metrics.json", "run.json"} <= {a.path for a in client.list_artifacts(parent)}
    finally:
        again.kill()


@dataclass(frozen=True)
class SmallDisk:
    """A 256 MiB tmpfs: ``path`` as the job sees it, ``view`` the same directory as seen from this
    process (plain file operations only: resolving a path under /proc/<pid>/root leaves the
    namespace, and RunStore resolves its root), ``wrap`` the prefix that runs a command where the
    tmpfs is mounted."""

    path: Path
    view: Path
    wrap: tuple[str, ...] = ()

    def seen(self, path: Path) -> Path:
        return self.view / path.relative_to(self.path)

    def read_run(self, run: Path, what: str) -> str:
        """READ_RUN's output for ``run`` (the job's path), run where the tmpfs is mounted."""
        done = subprocess.run([*self.wrap, sys.executable, "-c", READ_RUN, str(run), what],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()


READ_RUN = """
import sys
from scalable_xmr.store import torchfile
from scalable_xmr.store.run_store import RunStore
store = RunStore(sys.argv[1])
if sys.argv[2] == "damaged":
    for m in ("image", "text"):  # the checkpoints written before are intact (checksums verify)
        torchfile.load_newest_good(store.checkpoint_path(m))
    print(store.read().status)
else:
    print(*store.read_finished().finished_modalities())
"""


USERNS_KNOBS = ("/proc/sys/kernel/unprivileged_userns_clone", "/proc/sys/user/max_user_namespaces",
                "/proc/sys/kernel/apparmor_restrict_unprivileged_userns")


def _userns_tmpfs(mnt: Path) -> Iterator[SmallDisk]:
    """The tmpfs inside a user + mount namespace held open by ``cat`` (ends when its stdin closes,
    with this process at the latest): root in the namespace only, the mount invisible outside."""
    script = 'mount -t tmpfs -o size=256m tmpfs "$1" && echo mounted && exec cat'
    unshare = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(mnt)]
    try:
        holder = subprocess.Popen(unshare, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    except FileNotFoundError as e:
        _no_userns(f"{e.filename}: not found (util-linux)")
    try:
        if holder.stdout.readline().strip() != "mounted":
            holder.stdin.close()
            _no_userns(holder.stderr.read().strip())
        enter = ("nsenter", "--target", str(holder.pid), "--user", "--mount", "--preserve-credentials", "--")
        yield SmallDisk(mnt, Path(f"/proc/{holder.pid}/root") / mnt.relative_to("/"), enter)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def _no_userns(why: str) -> NoReturn:
    """No unprivileged user namespace (a kernel feature a workstation may have switched off): there
    the test belongs to the system tier. CI must have it: fail."""
    knobs = ", ".join(f"{k.rsplit('/', 1)[1]}={Path(k).read_text().strip()}" for k in USERNS_KNOBS
                      if Path(k).is_file())
    message = (f"no unprivileged user + mount namespace here (`unshare --user --map-root-user --mount`, "
               f"then mount a tmpfs: {why}; {knobs or 'no userns sysctl found'}): the kernel feature this "
               "test needs to mount a tmpfs without root; `make test-system` (as root) runs it on a "
               "real tmpfs")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _root_tmpfs(mnt: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        pytest.fail(f"the system tier mounts a tmpfs: run `make test-system` as root (uid {os.geteuid()})")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
    assert mount.returncode == 0, f"mount -t tmpfs failed: {mount.stderr}"
    try:
        yield SmallDisk(mnt, mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(params=["userns", pytest.param("root", marks=pytest.mark.system)])
def small_disk(request, tmp_path) -> Iterator[SmallDisk]:
    mnt = tmp_path.resolve() / "disk"
    mnt.mkdir()
    yield from (_userns_tmpfs if request.param == "userns" else _root_tmpfs)(mnt)


@fault("disk full (a small tmpfs) during training, then --resume after space is freed")
def test_a_full_disk_is_one_line_keeps_earlier_artifacts_and_resumes(tmp_path, small_xmedia, small_disk):
    run = small_disk.path / "run"
    checkpoints = [small_disk.seen(RunStore(run).checkpoint_path(m)) for m in ("image", "text")]
    job = Job(_train_args(small_xmedia, run, *LONG), tmp_path / "first", wrap=small_disk.wrap)
    job.wait_for(lambda: all(c.is_file() for c in checkpoints), "both checkpoints")
    filler = small_disk.seen(small_disk.path / "filler")
    with open(filler, "wb") as f:  # take every free byte
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    code = job.finish()
    err = job.err.read_text()
    assert code == 2, job.text()
    lines = [line for line in err.splitlines() if line.startswith("xmr: error")]
    assert len(lines) == 1 and lines[0].startswith(f"xmr: error: {run}/"), err
    assert lines[0].endswith(": No space left on device"), err
    assert "Traceback" not in err
    # run.json intact and readable, the checkpoints written before it intact
    assert small_disk.read_run(run, "damaged").splitlines()[-1] in ("running", "failed")
    filler.unlink()  # space freed
    code, _, err = run_xmr(_train_args(small_xmedia, run, *LONG, "--resume"), tmp_path / "resume",
                           wrap=small_disk.wrap)
    assert code == 0, err
    assert small_disk.read_run(run, "finished") == "image text"
