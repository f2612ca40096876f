"""The local-provider twin of cluster.yaml: same mounts, setup and start commands; local ports."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from one_line import fails_one_line
from ray.autoscaler._private.util import prepare_config, validate_config

from scalable_xmr.cli.cluster import main as cluster_main
from scalable_xmr.distributed.launcher_config import (
    LocalNode,
    LocalPorts,
    local_changes,
    local_config,
    with_flags,
)
from scalable_xmr.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
PORTS = LocalPorts(gcs=1001, dashboard=1002, dashboard_agent=1003, client_server=1004, object_manager=1005)


def cloud() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_with_flags_replaces_or_appends_and_keeps_shell_words():
    cmd = "ray start --head --port=6379 --autoscaling-config=~/ray_bootstrap_config.yaml"
    out = with_flags(cmd, {"--port": "7000", "--dashboard-port": "7001"})
    assert out == ("ray start --head --port=7000 --autoscaling-config=~/ray_bootstrap_config.yaml "
                   "--dashboard-port=7001")
    assert with_flags("ray start --address=$RAY_HEAD_IP:6379", {"--address": "$RAY_HEAD_IP:1"}) == \
        "ray start --address=$RAY_HEAD_IP:1"
    with pytest.raises(InputError, match="write --port=VALUE"):
        with_flags("ray start --port 6379", {"--port": "1"})


def test_local_config_keeps_what_cluster_yaml_installs_and_starts():
    src = cloud()
    node = LocalNode("alice", "/keys/id", "127.0.0.1", "/bin/proxy", PORTS)
    cfg = local_config(src, node, str(ROOT))
    assert cfg["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert cfg["auth"] == {"ssh_user": "alice", "ssh_private_key": "/keys/id",
                           "ssh_proxy_command": "/bin/proxy"}
    assert cfg["cluster_name"] == src["cluster_name"] + "-local"
    for key in ("setup_commands", "rsync_exclude", "rsync_filter", "initialization_commands"):
        assert cfg[key] == src[key]
    # "." (the repo) becomes the absolute source directory; the remote side is cluster.yaml's.
    assert cfg["file_mounts"] == {remote: str(ROOT) for remote, local in src["file_mounts"].items()
                                  if local == "."}
    head = cfg["head_start_ray_commands"]
    # Only cluster.yaml's `ray` commands: its MLflow server would outlive `ray down` here.
    assert head[0] == "ray stop" and len(head) == len([c for c in src["head_start_ray_commands"]
                                                       if c.startswith("ray ")])
    assert not any("mlflow" in c for c in head)
    for cloud_only in ("docker", "available_node_types", "head_node_type", "max_workers"):
        assert cloud_only not in cfg  # the image, instance types and IAM profiles are AWS's
    start = head[1].split()
    for flag in ("--port=1001", "--object-manager-port=1005", "--dashboard-port=1002",
                 "--dashboard-agent-listen-port=1003", "--ray-client-server-port=1004",
                 "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml", "--head"):
        assert start.count(flag) == 1, (flag, head[1])
    assert "--dashboard-host=0.0.0.0" not in start  # the cloud head's setting does not leak
    assert cfg["worker_start_ray_commands"][-1] == \
        "ray start --address=$RAY_HEAD_IP:1001 --object-manager-port=1005"
    validate_config(prepare_config(cfg))  # Ray's own validator accepts it


def test_the_generator_command_writes_a_valid_config(tmp_path, capsys):
    key = tmp_path / "key"
    key.write_text("not really a key")
    out = tmp_path / "local.yaml"
    assert cluster_main(["--config", str(ROOT / "cluster.yaml"), "--out", str(out), "--ssh-user", "bob",
                         "--ssh-key", str(key), "--gcs-port", "7000", "--cluster-name", "try"]) == 0
    cfg = yaml.safe_load(out.read_text())
    assert cfg["cluster_name"] == "try" and cfg["auth"]["ssh_private_key"] == str(key)
    assert "--port=7000" in cfg["head_start_ray_commands"][1].split()
    assert "ssh_proxy_command" not in cfg["auth"]
    validate_config(prepare_config(cfg))
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    assert printed.splitlines()[1] == f"changed from {ROOT / 'cluster.yaml'}:"
    assert "  docker: dropped (rayproject/ray:2.60.0-py311-cpu, rayproject/ray:2.60.0-py311-gpu)" in printed
    assert "IAM instance profiles" in printed and "--port=7000" in printed


def test_the_changes_are_listed_docker_provider_iam_mlflow_ports():
    src = cloud()
    cfg = local_config(src, LocalNode("alice", "/keys/id", ports=PORTS), str(ROOT))
    changes = local_changes(src, cfg)
    assert changes[0] == "provider: aws -> local (head 127.0.0.1, no workers)"
    assert changes[1].startswith("docker: dropped (rayproject/ray:2.60.0-py311-cpu, ")
    assert changes[2] == ("node types: dropped (head_cpu, worker_gpu), with their instance types and "
                          "IAM instance profiles ({'Name': 'xmr-head'}; {'Name': 'xmr-worker'})")
    assert changes[3] == "auth: ssh_user ubuntu -> alice"
    assert changes[4] == ("head start: 3 non-ray command(s) dropped (the MLflow server): pass "
                          "--tracking-uri to jobs")
    assert changes[5] == ("ports and addresses: --port=1001 --object-manager-port=1005 "
                          "--dashboard-host=127.0.0.1 --node-ip-address=127.0.0.1 --dashboard-port=1002 "
                          "--dashboard-agent-listen-port=1003 --ray-client-server-port=1004")
    # A config without docker or MLflow lists only what applies.
    bare = {k: v for k, v in src.items() if k != "docker"}
    bare["head_start_ray_commands"] = src["head_start_ray_commands"][:2]
    assert not any(c.startswith(("docker", "head start")) for c in local_changes(bare, cfg))


def test_generator_bad_input_is_one_line(tmp_path, capsys):
    key = tmp_path / "key"
    key.write_text("k")
    base = ["--out", str(tmp_path / "o.yaml"), "--ssh-key", str(key)]
    fails_one_line(cluster_main, capsys, [*base, "--config", str(tmp_path / "nope.yaml")],
                   f"--config {tmp_path / 'nope.yaml'}: no such file")
    fails_one_line(cluster_main, capsys, ["--out", "o.yaml", "--ssh-key", str(tmp_path / "k2")],
                   f"--ssh-key {tmp_path / 'k2'}: no such file")
    fails_one_line(cluster_main, capsys, [*base, "--config", str(ROOT / "cluster.yaml"), "--gcs-port", "0"],
                   "--gcs-port 0: a port is 1..65535")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\nprovider: {type: local, head_ip: 127.0.0.1, worker_ips: []}\n")
    fails_one_line(cluster_main, capsys, [*base, "--config", str(bad)], f"--config {bad}: no 'file_mounts'")
    # A cluster.yaml edited into a shape `ray up` would refuse: refused first, the key named.
    broken = cloud()
    broken["available_node_types"]["worker_gpu"]["resources"]["GPU"] = 0.5
    bad.write_text(yaml.safe_dump(broken))
    fails_one_line(cluster_main, capsys, [*base, "--config", str(bad)],
                   f"--config {bad}: available_node_types.worker_gpu.resources.GPU: 0.5 is not of type "
                   "'integer' (Ray's cluster-config schema)")
    bad.write_text("cluster_name: [unclosed\n")
    fails_one_line(cluster_main, capsys, [*base, "--config", str(bad)], f"--config {bad}: not YAML (")
