"""``xmr local-cluster``: a local-provider twin of cluster.yaml, for one machine.

    xmr local-cluster --ssh-user me --ssh-key ~/.ssh/id_ed25519 --out cluster-local.yaml
    ray up -y cluster-local.yaml
    ray submit cluster-local.yaml jobs/train_xmedia.py -- --epochs 3 --run $PWD/runs/local
    ray down -y cluster-local.yaml

The same file mounts, setup and Ray start commands as cluster.yaml (so trying it here tries them);
the provider is Ray's ``local`` one with a single head at --head-ip, reached over SSH as --ssh-user,
and every Ray port is set (defaults: Ray's own) so it can live beside another Ray on the machine.
cluster.yaml's ``docker:`` image, node types (instance types, IAM profiles) and the head's MLflow
server are left out; the command prints what it changed. A --config that Ray's own validation
refuses (what ``ray up`` would) is refused first, in one line.
``python -m scalable_xmr.cli.cluster`` takes the same arguments.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from scalable_xmr.cli.common import run_job
from scalable_xmr.distributed.launcher_config import (
    LocalNode,
    LocalPorts,
    cloud_config_problem,
    local_changes,
    local_config,
)
from scalable_xmr.errors import InputError, MissingError

PORTS = {  # flag -> LocalPorts field
    "--gcs-port": "gcs", "--dashboard-port": "dashboard", "--dashboard-agent-port": "dashboard_agent",
    "--client-server-port": "client_server", "--object-manager-port": "object_manager",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="cluster.yaml", metavar="YAML",
                   help="the cloud cluster config to derive from (default: cluster.yaml)")
    p.add_argument("--out", required=True, metavar="YAML", help="where to write the local config")
    p.add_argument("--ssh-user", default=getpass.getuser(),
                   help="user the launcher logs in as (default: you). `ray down` ends every Ray "
                   "process of that user on the machine")
    p.add_argument("--ssh-key", required=True, metavar="FILE", help="private key of --ssh-user")
    p.add_argument("--head-ip", default="127.0.0.1", help="the head node's address (127.0.0.1)")
    p.add_argument("--ssh-proxy-command", default=None, metavar="CMD",
                   help="ssh ProxyCommand (Ray has no SSH port setting: use it to reach an sshd on "
                   "another port than 22)")
    p.add_argument("--cluster-name", default=None, help="default: <cluster_name of --config>-local")
    defaults = LocalPorts()
    for flag, name in PORTS.items():
        p.add_argument(flag, type=int, default=getattr(defaults, name),
                       help=f"head's {name.replace('_', ' ')} port (default {getattr(defaults, name)})")


def write_local_config(args: argparse.Namespace) -> int:
    import yaml

    src = Path(args.config)
    if not src.is_file():
        raise MissingError(f"--config {args.config}: no such file")
    if not args.ssh_user.strip():  # `--ssh-user "$USER"` where USER is unset
        raise InputError("--ssh-user is empty: pass the login name (is $USER set?)")
    key = Path(args.ssh_key).expanduser()
    if not key.is_file():
        raise MissingError(f"--ssh-key {args.ssh_key}: no such file")
    try:
        cloud = yaml.safe_load(src.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"--config {args.config}: not YAML ({str(e).splitlines()[0]})") from None
    problem = cloud_config_problem(cloud)
    if problem:  # what `ray up cluster.yaml` would refuse, said before deriving anything from it
        raise InputError(f"--config {args.config}: {problem}")
    values = {flag: getattr(args, flag.lstrip("-").replace("-", "_")) for flag in PORTS}
    for flag, value in values.items():
        if not 1 <= value <= 65535:
            raise InputError(f"{flag} {value}: a port is 1..65535")
    ports = LocalPorts(**{PORTS[flag]: value for flag, value in values.items()})
    node = LocalNode(args.ssh_user, str(key.resolve()), args.head_ip, args.ssh_proxy_command, ports)
    try:
        cfg = local_config(cloud, node, str(src.resolve().parent), args.cluster_name)
    except InputError as e:
        raise InputError(f"--config {args.config}: {e}") from None
    header = (f"# Generated from {src.resolve()} by `xmr local-cluster`: Ray's local provider,\n"
              "# one head node; the file mounts, setup and start commands are cluster.yaml's.\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(cfg, sort_keys=False, width=1000))
    print(f"wrote {out} (head {args.head_ip}, user {args.ssh_user}, "
          f"dashboard http://{args.head_ip}:{ports.dashboard})")
    print(f"changed from {args.config}:")
    for change in local_changes(cloud, cfg):
        print(f"  {change}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("local-cluster", help="write a local-provider twin of cluster.yaml (one machine)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=write_local_config)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scalable_xmr.cli.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run_job(p, write_local_config, argv)


if __name__ == "__main__":
    sys.exit(main())
