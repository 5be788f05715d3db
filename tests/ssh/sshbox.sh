#!/bin/bash
# sshbox: several "machines" reachable over SSH, on this one machine.
#
#   sudo tests/ssh/sshbox.sh up      # one sshd per machine, keys, known_hosts
#   sudo tests/ssh/sshbox.sh down    # stop them, end what ran in them, remove it all
#
# Each machine is a network namespace (cwssh1..N) joined to a bridge (cwbr1)
# with an address of its own in 10.199.78.0/24 (the SLURM test bed uses
# cwbr0 and 10.199.77.0/24, so both can be up together). Only these addresses
# and loopback are used. The filesystem is shared, as on a lab whose homes are
# on NFS, except on the last machine: there $BOX/homes is an empty tmpfs of
# its own, so a cluster directory made under it is "not shared" with that
# machine (cw must copy the keys its workers need).
#
# What "up" leaves in $BOX (default /tmp/cw-sshbox):
#   id_ed25519       the test's key, authorised on every machine (as root)
#   wrong_ed25519    a key no machine accepts
#   known_hosts      every machine's generated host key, under its address
#   homes/           where the tests put CW_HOME
#   mN/              machine N's sshd_config, host key, pid file and log
# Needs root, iproute2, util-linux (nsenter, unshare) and Debian's openssh-server.
set -euo pipefail
# bridge_up, machine_up, machine_down
source "$(dirname "$(readlink -f "$0")")/../netns.sh"

N=${SSHBOX_MACHINES:-2}
BOX=${SSHBOX_DIR:-/tmp/cw-sshbox}
NET=10.199.78
BR=cwbr1
SSHD=/usr/sbin/sshd

sshd_config() {  # machine number
    cat <<EOF
ListenAddress $NET.$((10 + $1)):22
HostKey $BOX/m$1/ssh_host_ed25519_key
PidFile $BOX/m$1/sshd.pid
AuthorizedKeysFile $BOX/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# $BOX is under /tmp (mode 1777), which StrictModes would refuse.
StrictModes no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
LogLevel VERBOSE
EOF
}

up() {
    mkdir -p "$BOX/homes" /run/sshd
    chmod 700 "$BOX"
    chmod 755 /run/sshd
    [ -s "$BOX/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C cw-sshbox -f "$BOX/id_ed25519"
    [ -s "$BOX/wrong_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C cw-sshbox-wrong -f "$BOX/wrong_ed25519"
    cp "$BOX/id_ed25519.pub" "$BOX/authorized_keys"
    : > "$BOX/known_hosts"
    bridge_up "$BR" "$NET"
    for i in $(seq 1 "$N"); do
        ns=cwssh$i
        machine_up "$ns" "cwsshv$i" "$BR" "$NET.$((10 + i))"
        mkdir -p "$BOX/m$i"
        [ -s "$BOX/m$i/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$BOX/m$i/ssh_host_ed25519_key"
        echo "$NET.$((10 + i)) $(cut -d' ' -f1,2 "$BOX/m$i/ssh_host_ed25519_key.pub")" >> "$BOX/known_hosts"
        sshd_config "$i" > "$BOX/m$i/sshd_config"
        $SSHD -t -f "$BOX/m$i/sshd_config"
        if [ -s "$BOX/m$i/sshd.pid" ] && kill -0 "$(cat "$BOX/m$i/sshd.pid")" 2>/dev/null; then
            continue
        fi
        start=("$SSHD" -f "$BOX/m$i/sshd_config" -E "$BOX/m$i/sshd.log")
        if [ "$i" = "$N" ] && [ "$N" -gt 1 ]; then
            # This machine's sessions see an empty $BOX/homes of their own.
            nsenter --net="/run/netns/$ns" unshare --mount --propagation private \
                sh -c 'mount -t tmpfs -o mode=700,size=16m cw-sshbox "$1" && shift && exec "$@"' \
                sh "$BOX/homes" "${start[@]}"
        else
            nsenter --net="/run/netns/$ns" "${start[@]}"
        fi
    done
    for i in $(seq 1 "$N"); do
        for _ in $(seq 1 50); do
            if ssh -F /dev/null -o BatchMode=yes -o ConnectTimeout=2 -o StrictHostKeyChecking=yes \
                -o UserKnownHostsFile="$BOX/known_hosts" -o GlobalKnownHostsFile=/dev/null \
                -i "$BOX/id_ed25519" "root@$NET.$((10 + i))" true 2>/dev/null; then
                continue 2
            fi
            sleep 0.2
        done
        echo "sshbox: sshd on $NET.$((10 + i)) does not answer; see $BOX/m$i/sshd.log" >&2
        exit 1
    done
    echo "sshbox: $N machine(s) answer on $NET.11-$NET.$((10 + N))"
}

down() {
    for i in $(seq 1 "$N"); do
        ns=cwssh$i
        if ip netns list | grep -qw "$ns"; then
            # sshd and whatever ran through it: everything in this namespace is ours.
            ip netns pids "$ns" | xargs -r kill 2>/dev/null || true
        fi
    done
    sleep 0.5
    for i in $(seq 1 "$N"); do
        ns=cwssh$i
        if ip netns list | grep -qw "$ns"; then
            ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
        fi
        machine_down "$ns" "cwsshv$i"
    done
    ip link del "$BR" 2>/dev/null || true
    rm -rf "$BOX"
    echo "sshbox: down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
