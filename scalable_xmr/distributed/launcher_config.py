"""A cluster-launcher config for trying ``cluster.yaml`` on one machine (Ray's ``local`` provider).

``local_config`` derives it from the cloud config, so the two cannot drift: the same file mounts,
rsync rules, setup commands and Ray start commands; only the provider (``local``, one head at
``head_ip``, no workers: the node types with their instance types and IAM instance profiles go), the
SSH login and the ports differ, the ``docker:`` section goes (commands run in the login user's shell),
and of the head's start commands only the ``ray`` ones stay (the cloud head's MLflow server would
outlive ``ray down`` here and take port 5000). ``local_changes`` lists exactly that, for
``xmr local-cluster`` to print. The local provider rejects
``available_node_types``, so the result is a separate file (``python -m scalable_xmr.cli.cluster
local-config``); tests/e2e/test_cluster_launcher.py runs ``ray up`` / ``submit`` / ``job submit`` /
``down`` with it.

Ports: a second Ray on a machine collides with the first on the fixed defaults (GCS 6379, dashboard
8265, dashboard agent 52365, Ray client 10001, object manager 8076 of cluster.yaml), so every one is
set explicitly, and the head binds its dashboard and node address to ``head_ip`` (left alone, Ray
swaps 127.0.0.1 for the machine's LAN address).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from scalable_xmr.errors import InputError

# Keys copied unchanged from the cloud config: what is installed and how Ray starts.
COPIED_KEYS = (
    "file_mounts_sync_continuously", "rsync_exclude", "rsync_filter", "initialization_commands",
    "setup_commands", "head_setup_commands", "worker_setup_commands",
)


@dataclass(frozen=True)
class LocalPorts:
    """The head's ports (Ray's defaults, except the object manager's, which cluster.yaml fixes)."""

    gcs: int = 6379
    dashboard: int = 8265
    dashboard_agent: int = 52365
    client_server: int = 10001
    object_manager: int = 8076


@dataclass(frozen=True)
class LocalNode:
    """Where and how the launcher logs in: ``ssh_user`` with ``ssh_private_key`` at ``head_ip``.

    ``ssh_proxy_command``: Ray's launcher has no SSH port setting, so an sshd on another port than
    22 is reached through a ProxyCommand (a pipe to ``head_ip:port``)."""

    ssh_user: str
    ssh_private_key: str
    head_ip: str = "127.0.0.1"
    ssh_proxy_command: str | None = None
    ports: LocalPorts = field(default_factory=LocalPorts)


def with_flags(command: str, flags: dict[str, str]) -> str:
    """``command`` with each ``--flag=value`` of ``flags`` set: replaced where present, appended
    where not. Split on whitespace, not shell words, so ``~`` and ``$RAY_HEAD_IP`` stay unquoted."""
    words = command.split()
    for flag, value in flags.items():
        hits = [i for i, w in enumerate(words) if w == flag or w.startswith(flag + "=")]
        if any(words[i] == flag for i in hits):
            raise InputError(f"start command {command!r}: write {flag}=VALUE (one word) to let it be set")
        if hits:
            words[hits[0]] = f"{flag}={value}"
        else:
            words.append(f"{flag}={value}")
    return " ".join(words)


def head_flags(node: LocalNode) -> dict[str, str]:
    p = node.ports
    return {
        "--port": str(p.gcs), "--object-manager-port": str(p.object_manager),
        "--node-ip-address": node.head_ip, "--dashboard-host": node.head_ip,
        "--dashboard-port": str(p.dashboard), "--dashboard-agent-listen-port": str(p.dashboard_agent),
        "--ray-client-server-port": str(p.client_server),
    }


def worker_flags(node: LocalNode) -> dict[str, str]:
    return {"--address": f"$RAY_HEAD_IP:{node.ports.gcs}",
            "--object-manager-port": str(node.ports.object_manager)}


def _start_commands(commands: list[str], flags: dict[str, str]) -> list[str]:
    return [with_flags(c, flags) if c.split()[:2] == ["ray", "start"] else c for c in commands]


def _is_ray_command(command: str) -> bool:
    return command.split()[:1] == ["ray"]


def cloud_config_problem(cloud: Any) -> str | None:
    """Why Ray's own cluster-config validation (``ray up`` runs the same) refuses ``cloud``, in one
    line naming the key, or None. Offline: the provider's defaults are a file in the Ray wheel; no
    cloud API is called."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    if not isinstance(cloud, dict):
        return "not a cluster config (a YAML mapping)"
    try:
        validate_config(prepare_config(cloud))
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        return f"{where}: {e.message.splitlines()[0]} (Ray's cluster-config schema)"
    except (ValueError, KeyError, TypeError, NotImplementedError, RuntimeError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r}"
    return None


def local_changes(cloud: dict[str, Any], local: dict[str, Any]) -> list[str]:
    """What the local twin ``local`` changes from ``cloud``, one line each (``xmr local-cluster``
    prints them)."""
    changes = [f"provider: {cloud.get('provider', {}).get('type')} -> local "
               f"(head {local['provider']['head_ip']}, no workers)"]
    if "docker" in cloud:
        d = cloud["docker"]
        images = sorted({d[k] for k in ("image", "head_image", "worker_image") if k in d})
        changes.append(f"docker: dropped ({', '.join(images) or 'no image'}): commands run in the "
                       "login user's shell")
    types = cloud.get("available_node_types", {})
    if types:
        iam = sorted({str(t.get("node_config", {}).get("IamInstanceProfile")) for t in types.values()
                      if "IamInstanceProfile" in t.get("node_config", {})})
        changes.append(f"node types: dropped ({', '.join(types)}), with their instance types"
                       + (f" and IAM instance profiles ({'; '.join(iam)})" if iam else ""))
    changes.append(f"auth: ssh_user {cloud.get('auth', {}).get('ssh_user')} -> {local['auth']['ssh_user']}")
    dropped = [c for c in cloud.get("head_start_ray_commands", []) if not _is_ray_command(c)]
    if dropped:
        changes.append(f"head start: {len(dropped)} non-ray command(s) dropped (the MLflow server): "
                       "pass --tracking-uri to jobs")
    start = next((c for c in local["head_start_ray_commands"] if c.split()[:2] == ["ray", "start"]), "")
    ports = [w for w in start.split() if w.split("=")[0] in (
        "--port", "--object-manager-port", "--dashboard-port", "--dashboard-agent-listen-port",
        "--ray-client-server-port", "--node-ip-address", "--dashboard-host")]
    changes.append(f"ports and addresses: {' '.join(ports)}")
    return changes


def local_config(cloud: dict[str, Any], node: LocalNode, source_dir: str,
                 cluster_name: str | None = None) -> dict[str, Any]:
    """The local-provider twin of ``cloud`` (a parsed cluster.yaml); ``source_dir`` is the directory
    that relative file-mount sources (``"."``: the repo) are taken from."""
    for key in ("cluster_name", "file_mounts", "setup_commands", "head_start_ray_commands"):
        if key not in cloud:
            raise InputError(f"no {key!r} (a cluster.yaml for `ray up` has one)")
    mounts = {remote: os.path.normpath(os.path.join(os.path.abspath(source_dir), os.path.expanduser(local)))
              for remote, local in cloud["file_mounts"].items()}
    auth = {"ssh_user": node.ssh_user, "ssh_private_key": node.ssh_private_key}
    if node.ssh_proxy_command:
        auth["ssh_proxy_command"] = node.ssh_proxy_command
    cfg: dict[str, Any] = {
        "cluster_name": cluster_name or f"{cloud['cluster_name']}-local",
        "provider": {"type": "local", "head_ip": node.head_ip, "worker_ips": []},
        "auth": auth,
        "upscaling_speed": cloud.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": cloud.get("idle_timeout_minutes", 5),
        "file_mounts": mounts,
    }
    cfg.update({k: cloud[k] for k in COPIED_KEYS if k in cloud})
    ray_only = [c for c in cloud["head_start_ray_commands"] if _is_ray_command(c)]
    cfg["head_start_ray_commands"] = _start_commands(ray_only, head_flags(node))
    cfg["worker_start_ray_commands"] = _start_commands(cloud.get("worker_start_ray_commands", []),
                                                       worker_flags(node))
    return cfg
