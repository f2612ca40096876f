#!/usr/bin/env bash
# A one-machine "cluster node" for tests/e2e/test_cluster_launcher.py, reached over SSH on 127.0.0.1.
#
#   setup_sshd.sh start STATE_DIR PORT USER KEY_FILE CACHE_KEY   (run as root: the system tier, make test-system)
#   setup_sshd.sh stop  STATE_DIR
#
# start: installs openssh-server and rsync with apt-get when missing; creates USER (non-root: `ray
# stop` / `ray down` end every Ray process of the user they run as, so the cluster must not be root,
# who runs the test suite's own Ray) with KEY_FILE.pub in its authorized_keys, root's pip
# configuration (so `pip install torch==2.13.0` takes the local CPU wheel), its own RAY_TMPDIR and a
# venv (~/venv, activated in ~/.bashrc: the launcher runs every command through `bash --login -i`)
# that is kept between runs while CACHE_KEY (a hash of the pins) is unchanged; writes STATE_DIR/
# ssh-proxy (Ray's `ssh_proxy_command`: the launcher has no ssh port option); starts an sshd bound
# to 127.0.0.1:PORT with its own config, host key and pid file in STATE_DIR.
# stop: ends that sshd (and only it).
set -euo pipefail

die() { echo "setup_sshd.sh: $*" >&2; exit 1; }

start() {
    local state=$1 port=$2 user=$3 key=$4 cache_key=$5
    [[ $(id -u) == 0 ]] || die "must run as root (creates a user, starts sshd); running as $(id -un)"
    mkdir -p "$state"
    chmod 700 "$state"
    install_packages
    make_user "$user" "$key"
    node_env "$user" "$cache_key"
    copy_pip_config "$user"
    start_sshd "$state" "$port" "$user"
}

install_packages() {
    local missing=()
    [[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
    command -v rsync >/dev/null || missing+=(rsync)
    command -v ssh-keygen >/dev/null || missing+=(openssh-client)
    ((${#missing[@]} == 0)) && return
    echo "installing ${missing[*]} with apt-get" >&2
    apt-get update -qq >&2 || die "apt-get update failed; cannot install ${missing[*]} (missing)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed; these are missing"
    [[ -x /usr/sbin/sshd ]] && command -v rsync >/dev/null \
        || die "after apt-get: /usr/sbin/sshd or rsync still missing"
}

make_user() {
    local user=$1 key=$2 home
    id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
    # '*': no password login, but not "locked" ('!'), which sshd refuses even for key logins.
    usermod --password '*' "$user"
    home=$(getent passwd "$user" | cut -d: -f6)
    [[ -f $key ]] || ssh-keygen -q -t ed25519 -N '' -C "$user@xmr-e2e" -f "$key"
    install -d -o "$user" -g "$user" -m 700 "$home/.ssh"
    install -o "$user" -g "$user" -m 600 "$key.pub" "$home/.ssh/authorized_keys"
}

copy_pip_config() {
    # The same pip configuration as root: its user pip.conf (/etc/pip.conf applies to everyone) and
    # its PIP_* environment. Then check that pip sees the same settings for both.
    local user=$1 home
    home=$(getent passwd "$user" | cut -d: -f6)
    for conf in "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
        [[ -f $conf ]] || continue
        # mkdir as the user: a root-owned ~/.config would break matplotlib's cache and the like.
        su "$user" -c "mkdir -p '$(dirname "$home/${conf#"$HOME"/}")'"
        install -o "$user" -g "$user" -m 644 "$conf" "$home/${conf#"$HOME"/}"
    done
    env | grep -E '^PIP_' | sed -E "s/^([^=]*)=(.*)$/export \1='\2'/" > "$home/.xmr-pip-env" || true
    chown "$user:$user" "$home/.xmr-pip-env"
    local mine theirs
    # The same pip reads both (root running the node's venv pip reads root's files and environment).
    mine=$( (cd / && "$home/venv/bin/python" -m pip config list 2>/dev/null; env | grep -E '^PIP_') | sort)
    theirs=$(su - "$user" -c "source ~/.xmr-pip-env; cd / && ~/venv/bin/python -m pip config list \
        2>/dev/null; env | grep -E '^PIP_'" | sort)  # sorted: pip versions list them in other orders
    [[ "$mine" == "$theirs" ]] || die "pip configuration of $user differs from root's:
root: $mine
$user: $theirs"
}

node_env() {
    # ~/.bashrc (sourced by every launcher command): the venv, the pip settings, Ray's temp dir.
    local user=$1 cache_key=$2 home python
    home=$(getent passwd "$user" | cut -d: -f6)
    python=$(command -v python3.11 || true)
    [[ -n $python ]] || die "python3.11 is missing (the node's venv needs it)"
    # /root is private: a pyenv python under it is not usable by $user; take the system one.
    [[ -x /usr/bin/python3.11 ]] && python=/usr/bin/python3.11
    if [[ ! -f $home/venv/.xmr-cache-key || $(cat "$home/venv/.xmr-cache-key") != "$cache_key" ]]; then
        echo "creating $home/venv (cache key $cache_key)" >&2
        rm -rf "$home/venv"
        su - "$user" -c "$python -m venv ~/venv && echo '$cache_key' > ~/venv/.xmr-cache-key" \
            || die "could not create $home/venv with $python (python3.11-venv missing?)"
    else
        echo "reusing $home/venv (cache key $cache_key)" >&2
    fi
    local block="# >>> scalable_xmr e2e node >>>
source ~/.xmr-pip-env
source ~/venv/bin/activate
export RAY_TMPDIR=~/raytmp RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
mkdir -p ~/raytmp
# <<< scalable_xmr e2e node <<<"
    # Before anything else in .bashrc (Debian's returns early when not interactive).
    local rest
    rest=$(sed '/^# >>> scalable_xmr e2e node >>>$/,/^# <<< scalable_xmr e2e node <<<$/d' \
        "$home/.bashrc" 2>/dev/null || true)
    printf '%s\n%s\n' "$block" "$rest" > "$home/.bashrc"
    chown "$user:$user" "$home/.bashrc"
}

start_sshd() {
    local state=$1 port=$2 user=$3
    [[ -f $state/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -f "$state/ssh_host_ed25519_key"
    cat > "$state/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $state/ssh_host_ed25519_key
PidFile $state/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
AllowUsers $user
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
MaxSessions 50
MaxStartups 50:30:100
Subsystem sftp internal-sftp
EOF
    printf '#!/bin/bash\n# ssh ProxyCommand: a pipe to the test sshd on 127.0.0.1:%s\nexec 3<>/dev/tcp/127.0.0.1/%s\ncat <&3 &\ncat >&3\n' \
        "$port" "$port" > "$state/ssh-proxy"
    chmod 755 "$state/ssh-proxy"
    mkdir -p /run/sshd
    chmod 755 /run/sshd
    /usr/sbin/sshd -t -f "$state/sshd_config" || die "sshd rejected $state/sshd_config"
    /usr/sbin/sshd -f "$state/sshd_config" -E "$state/sshd.log" || die "sshd did not start (see $state/sshd.log)"
    for _ in $(seq 50); do [[ -s $state/sshd.pid ]] && break; sleep 0.1; done
    [[ -s $state/sshd.pid ]] || die "sshd wrote no pid file (see $state/sshd.log)"
    echo "sshd pid $(cat "$state/sshd.pid") on 127.0.0.1:$port" >&2
}

stop() {
    local state=$1 pid
    [[ -s $state/sshd.pid ]] || return 0
    pid=$(cat "$state/sshd.pid")
    # Only the sshd this script started: its pid file, and its own config on its command line.
    if grep -q "$state/sshd_config" "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$state/sshd.pid"
}

case "${1:-}" in
    start) shift; (($# == 5)) || die "usage: setup_sshd.sh start STATE_DIR PORT USER KEY_FILE CACHE_KEY"
           start "$@" ;;
    stop) shift; (($# == 1)) || die "usage: setup_sshd.sh stop STATE_DIR"; stop "$1" ;;
    *) die "usage: setup_sshd.sh start|stop ..." ;;
esac
