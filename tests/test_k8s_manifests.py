"""k8s/ holds KubeRay manifests that the KubeRay v1.4 API would accept (tests/k8s_schema.py, our schema
of its CRDs) and that run what cluster.yaml runs: the same Ray, Python and image, GPU workers, the
package, and `python -m jobs.train_xmedia` on S3. Offline: nothing here talks to a cluster."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from k8s_schema import SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ["k8s/raycluster.yaml", "k8s/rayjob.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_the_kuberay_crd_schema(name):
    doc = load(name)
    jsonschema.validate(doc, SCHEMAS[doc["kind"]])


def test_the_schema_refuses_what_the_api_server_would():
    doc = load("k8s/rayjob.yaml")
    bad = copy.deepcopy(doc)
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 4  # not a string
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        jsonschema.validate(bad, SCHEMAS["RayJob"])
    bad = copy.deepcopy(doc)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 8  # misspelt
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(bad, SCHEMAS["RayJob"])
    bad = copy.deepcopy(doc)
    bad["spec"]["submissionMode"] = "Batch"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMAS["RayJob"])


@pytest.mark.parametrize("name", MANIFESTS)
def test_same_ray_image_and_gpu_workers_as_cluster_yaml(name):
    spec = cluster_spec(load(name))
    assert spec["rayVersion"] == "2.60.0"
    docker = yaml.safe_load((ROOT / "cluster.yaml").read_text())["docker"]
    dockerfile = (ROOT / "k8s" / "Dockerfile").read_text()
    assert f"FROM {docker['worker_image'].split(':')[0]}:{docker['worker_image'].split(':')[1]}" in dockerfile
    assert "torch==2.13.0" in dockerfile and "pip install" in dockerfile
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 5
    worker = gpu["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    images = {c["image"] for g in [spec["headGroupSpec"], gpu] for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1  # one image everywhere: the driver's Ray and Python are the workers'
    head = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert any(c.get("command", [])[:2] == ["mlflow", "server"] for c in head)
    for group in [spec["headGroupSpec"], gpu]:
        assert group["template"]["spec"]["serviceAccountName"] == "xmr"  # S3 credentials on every pod


def test_rayjob_runs_the_training_module_on_s3_with_the_heads_mlflow():
    words = shlex.split(load("k8s/rayjob.yaml")["spec"]["entrypoint"])
    assert words[words.index("python"):words.index("python") + 3] == ["python", "-m", "jobs.train_xmedia"]
    for flag in ("--data", "--run"):
        assert words[words.index(flag) + 1].startswith("s3://")  # no relative path under a job
    assert words[words.index("--tracking-uri") + 1] == "http://127.0.0.1:5000"
