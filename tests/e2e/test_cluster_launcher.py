"""The cluster path, end to end on this machine: `ray up` / `ray submit` / `ray job submit` / `ray down`
with a local-provider twin of cluster.yaml, over SSH to 127.0.0.1 (issue #13).

tests/e2e/cluster/setup_sshd.sh makes the "node": a dedicated non-root user (`ray stop` / `ray down`
end every Ray process of the user they run as; the suite's own Ray runs as root) with its own key,
RAY_TMPDIR, root's pip configuration and a venv kept between runs (keyed on the pins: a second run
skips the torch install), and an sshd on 127.0.0.1 with its own port and config. The config comes
from `python -m scalable_xmr.cli.cluster` (the README's command), so cluster.yaml's mounts, setup
and start commands are what runs. The wall times are printed (run with -s to see them) and, with
XMR_CLUSTER_TIMES=<file>, written there as JSON (BENCHMARKS.md, "Cluster launcher").

That test is the system tier (`make test-system`, as root): it installs packages when missing, creates
a user and starts an sshd. Not as the calling user instead: the launcher works in the login user's
home (its ~/.bashrc, ~/venv, the file mounts under ~: sshd takes the home from the passwd entry) and
`ray stop` / `ray down` end every Ray process of that user, the suite's own and any of the user's.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "tests" / "e2e" / "cluster" / "setup_sshd.sh"
USER = "xmrtest"
CLUSTER = "xmr-e2e"
MODALITIES = ["image", "text", "audio", "3d", "video"]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_key() -> str:
    """What the node's venv depends on: the package's dependencies (not its dev extras or tool
    settings), the versions this suite's own venv resolved them to, and cluster.yaml's setup
    commands. The versions matter: an open range (``mlflow>=3``) that a new release moved must not
    leave the node on the old one. The test's MLflow client opens the jobs' sqlite store between
    the two submissions and migrates it to its own schema; an older MLflow on the node then refuses
    the store ("out-of-date database schema"), as a user's would after the same skew."""
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    resolved = {name: version(name) for name in (Requirement(p).name for p in pins)}
    setup = yaml.safe_load((ROOT / "cluster.yaml").read_text())["setup_commands"]
    return hashlib.sha256(json.dumps([pins, resolved, setup]).encode()).hexdigest()[:16]


def run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    """Run ``cmd`` (output to ``log``); returns (exit code, output, seconds)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT,
                              env=env or launcher_env())
    return proc.returncode, log.read_text(errors="replace"), time.perf_counter() - start


def launcher_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """The node user, its sshd (stopped at the end) and its ports; fails saying what is missing."""
    if os.geteuid() != 0:
        pytest.fail("the cluster e2e test is the system tier, run by `make test-system` as root: it creates "
                    f"the user {USER!r} and starts an sshd (running as uid {os.geteuid()})")
    for tool in ("bash", "su", "useradd", "apt-get"):
        if shutil.which(tool) is None:
            pytest.fail(f"the cluster e2e test needs {tool!r} on PATH")
    state = tmp_path_factory.mktemp("cluster")
    port = free_port()
    key = state / "id_ed25519"
    start = subprocess.run(["bash", str(SETUP), "start", str(state), str(port), USER, str(key), cache_key()],
                           capture_output=True, text=True, timeout=900)
    try:
        assert start.returncode == 0, f"setup_sshd.sh failed:\n{start.stderr[-4000:]}"
        home = Path(pwd.getpwnam(USER).pw_dir)
        work = home / f"xmr-e2e-{os.getpid()}"
        subprocess.run(["su", USER, "-c", f"mkdir -p {work}"], check=True)
        yield {"state": state, "port": port, "key": key, "home": home, "work": work,
               "venv_reused": "reusing" in start.stderr}
    finally:
        stop_node_ray()
        subprocess.run(["bash", str(SETUP), "stop", str(state)], timeout=60)
        if "work" in locals():
            shutil.rmtree(work, ignore_errors=True)
        for suffix in ("state", "lock"):  # the local provider's record of this test's cluster
            Path(f"/tmp/ray/cluster-{CLUSTER}.{suffix}").unlink(missing_ok=True)


def stop_node_ray() -> None:
    """If `ray down` did not run or failed, stop the node user's Ray (only that user's processes)."""
    alive = subprocess.run(["pgrep", "-u", USER, "-f", "gcs_server|raylet"], capture_output=True)
    if alive.returncode == 0:
        subprocess.run(["su", "-", USER, "-c", "test -x ~/venv/bin/ray && ~/venv/bin/ray stop --force"],
                       capture_output=True, timeout=120)


def local_config(node, out: Path) -> dict[str, int]:
    """Generate the local-provider twin of cluster.yaml with the README's command."""
    ports = {flag: free_port() for flag in ("--gcs-port", "--dashboard-port", "--dashboard-agent-port",
                                            "--client-server-port", "--object-manager-port")}
    cmd = [sys.executable, "-m", "scalable_xmr.cli.cluster", "--config", str(ROOT / "cluster.yaml"),
           "--out", str(out), "--ssh-user", USER, "--ssh-key", str(node["key"]),
           "--ssh-proxy-command", str(node["state"] / "ssh-proxy"), "--cluster-name", CLUSTER]
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=120)
    cfg = yaml.safe_load(out.read_text())
    cloud = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert cfg["setup_commands"] == cloud["setup_commands"]  # cluster.yaml's, not a copy of them
    assert cfg["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    return ports


def make_data(node) -> Path:
    from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia

    data = node["work"] / "data"
    make_synthetic_xmedia(str(data), scale="small", seed=0)
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(data)], check=True)
    return data


def job_args(node, data: Path, name: str) -> list[str]:
    work = node["work"]
    return ["--data", str(data), "--epochs", "3", "--run", str(work / "runs" / name),
            "--tracking-uri", f"sqlite:///{work}/mlflow.db", "--experiment", "cluster-e2e", "--no-progress"]


def check_run(node, name: str) -> None:
    """run.json finished for every modality; an MLflow parent run with one child per modality."""
    from mlflow.tracking import MlflowClient

    meta = json.loads((node["work"] / "runs" / name / "run.json").read_text())
    assert meta["status"] == "finished"
    assert {m: e["status"] for m, e in meta["modalities"].items()} == dict.fromkeys(MODALITIES, "finished")
    client = MlflowClient(f"sqlite:///{node['work']}/mlflow.db")
    parent = client.get_run(meta["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["modality"] for c in children) == sorted(MODALITIES)


def assert_attached(out: str, gcs_port: int) -> None:
    lines = [line for line in out.splitlines() if line.startswith("attached to Ray cluster at ")]
    assert lines, f"the job did not say it attached to the cluster:\n{tail(out)}"
    assert lines[0].startswith(f"attached to Ray cluster at 127.0.0.1:{gcs_port}: 1 node, "), lines[0]
    assert "started a private local Ray" not in out


@pytest.mark.system
def test_ray_up_submit_job_submit_down(node, tmp_path):
    cfg = tmp_path / "cluster-local.yaml"
    ports = local_config(node, cfg)
    data = make_data(node)
    times: dict[str, float | bool] = {"venv_reused": node["venv_reused"]}
    try:
        code, out, times["ray_up_s"] = run([RAY, "up", "-y", str(cfg)], tmp_path / "up.log", 1800)
        assert code == 0, f"ray up failed:\n{tail(out)}"
        code, out, _ = run([RAY, "exec", str(cfg), "python -c 'import torch; "
                            "print(\"TORCH\", torch.__version__, torch.version.cuda)'"],
                           tmp_path / "torch.log", 300)
        torch_line = next((x for x in out.splitlines() if x.startswith("TORCH ")), None)
        assert code == 0 and torch_line, f"could not ask the node for its torch:\n{tail(out)}"
        assert torch_line.split()[1:] == ["2.13.0+cpu", "None"], f"the node got a CUDA build: {torch_line}"

        code, out, times["ray_submit_s"] = run(
            [RAY, "submit", str(cfg), "jobs/train_xmedia.py", "--", *job_args(node, data, "submit")],
            tmp_path / "submit.log", 900)
        assert code == 0, f"ray submit failed:\n{tail(out)}"
        assert_attached(out, ports["--gcs-port"])
        check_run(node, "submit")

        dashboard = f"http://127.0.0.1:{ports['--dashboard-port']}"
        submit = [RAY, "job", "submit", "--address", dashboard, "--working-dir", ".", "--",
                  "python", "-m", "jobs.train_xmedia"]
        # A relative --run would land in the job's temporary working directory: refused, one line.
        # Its working dir leaves out docs/ so that the two submissions upload different packages: Ray
        # reuses an uploaded package by content hash, and one whose job has ended may already be
        # deleted ("Failed to download runtime_env file package", ray-project/ray#46625).
        relative = ["--data", str(data), "--epochs", "3", "--run", "runs/relative", "--no-tracking"]
        other_package = ["--runtime-env-json", json.dumps({"excludes": ["docs/"]})]
        code, out, times["ray_job_submit_refused_s"] = run(
            [*submit[:-4], *other_package, *submit[-4:], *relative], tmp_path / "rel.log", 600)
        assert code != 0, f"a relative --run was accepted under ray job submit:\n{tail(out)}"
        errors = [x for x in out.splitlines() if x.startswith("xmr: error: --run runs/relative: under `ray "
                                                             "job submit`")]
        assert errors and "pass an absolute path" in errors[0], tail(out)

        code, out, times["ray_job_submit_s"] = run([*submit, *job_args(node, data, "job")],
                                                   tmp_path / "job.log", 900)
        assert code == 0, f"ray job submit failed:\n{tail(out)}"
        assert_attached(out, ports["--gcs-port"])
        check_run(node, "job")
    finally:
        code, out, times["ray_down_s"] = run([RAY, "down", "-y", str(cfg)], tmp_path / "down.log", 600)
        record(times)
    assert code == 0, f"ray down failed:\n{tail(out)}"
    alive = subprocess.run(["pgrep", "-u", USER, "-f", "gcs_server|raylet"], capture_output=True)
    assert alive.returncode == 1, "Ray processes of the node user survived `ray down`"


def record(times: dict) -> None:
    text = json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in times.items()}, indent=1)
    print(f"cluster launcher wall times: {text}")
    if os.environ.get("XMR_CLUSTER_TIMES"):
        Path(os.environ["XMR_CLUSTER_TIMES"]).write_text(text + "\n")


def test_without_a_cluster_the_job_says_it_started_a_private_ray(tmp_path):
    """The other half of attaching honestly: no cluster to join (no RAY_ADDRESS, no launcher head
    config in ~) -> a private local Ray, said as such."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    env["HOME"] = str(tmp_path)  # no ~/ray_bootstrap_config.yaml here
    code = "from scalable_xmr.distributed.cluster import connect; connect(num_cpus=1)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    private = re.compile(r"started a private local Ray \(1 CPUs, \d+ GPUs\)")
    said = [x for x in proc.stderr.splitlines() if private.fullmatch(x)]
    assert said, proc.stderr[-3000:]
    assert "attached to Ray cluster" not in proc.stderr
