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
