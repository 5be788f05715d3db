#!/bin/bash
# slurmbox: a real SLURM cluster of several nodes on this one machine.
#
#   sudo tests/slurm/slurmbox.sh up      # munged, slurmctld, one slurmd per node
#   sudo tests/slurm/slurmbox.sh down    # stop them all, remove what "up" added
#
# Each node is a network namespace (cwnode1..N) joined to a bridge (cwbr0) with
# an address of its own in 10.199.77.0/24, so a master and workers on different
# nodes really talk across hosts. Only these addresses and loopback are used.
# Needs root and Debian's slurm-wlm and munge packages. SLURM 22.05 facts this
# relies on: SlurmctldHost must be `hostname -s`; slurmd must be started with
# nsenter --net (ip netns exec remounts /sys and slurmd dies without cgroups);
# node names must resolve, so "up" adds /etc/hosts lines and "down" removes them.
set -euo pipefail
# bridge_up, machine_up, machine_down
source "$(dirname "$(readlink -f "$0")")/../netns.sh"

N=${SLURMBOX_NODES:-3}
BOX=${SLURMBOX_DIR:-/tmp/cw-slurmbox}
NET=10.199.77
BR=cwbr0
CONF=/etc/slurm/slurm.conf
MARK="# cw-slurmbox"
CTL=$(hostname -s)

up() {
    mkdir -p "$BOX"/{state,spool,log,run}
    # munge: the authentication every SLURM daemon and command uses
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged
        echo started > "$BOX/run/munged.ours"
    fi
    # network: a bridge in the root namespace, one namespace per node
    bridge_up "$BR" "$NET"
    for i in $(seq 1 "$N"); do
        machine_up "cwnode$i" "cwveth$i" "$BR" "$NET.$((10 + i))"
        grep -q "^$NET.$((10 + i)) node$i " /etc/hosts || echo "$NET.$((10 + i)) node$i $MARK" >> /etc/hosts
    done
    # slurm.conf: only written where none of the machine's own is
    if [ -e "$CONF" ] && ! grep -q "$MARK" "$CONF"; then
        echo "slurmbox: $CONF exists and is not ours; refusing to replace it" >&2
        exit 1
    fi
    mkdir -p /etc/slurm
    {
        echo "$MARK"
        echo "ClusterName=cwbox"
        echo "SlurmctldHost=$CTL($NET.1)"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "SlurmdParameters=config_overrides"
        echo "SchedulerType=sched/backfill"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_CPU"
        echo "ReturnToService=2"
        echo "MpiDefault=none"
        echo "KillWait=5"
        echo "MinJobAge=2"
        echo "OverTimeLimit=0"
        echo "StateSaveLocation=$BOX/state"
        echo "SlurmdSpoolDir=$BOX/spool/%n"
        echo "SlurmctldPidFile=$BOX/run/slurmctld.pid"
        echo "SlurmdPidFile=$BOX/run/slurmd-%n.pid"
        echo "SlurmctldLogFile=$BOX/log/slurmctld.log"
        echo "SlurmdLogFile=$BOX/log/slurmd-%n.log"
        for i in $(seq 1 "$N"); do
            echo "NodeName=node$i NodeAddr=$NET.$((10 + i)) CPUs=4 State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP LLN=YES"
    } > "$CONF"
    pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -c
    for i in $(seq 1 "$N"); do
        mkdir -p "$BOX/spool/node$i"
        if ! [ -s "$BOX/run/slurmd-node$i.pid" ] || ! kill -0 "$(cat "$BOX/run/slurmd-node$i.pid")" 2>/dev/null; then
            nsenter --net="/run/netns/cwnode$i" /usr/sbin/slurmd -N "node$i"
        fi
    done
    for _ in $(seq 1 60); do
        idle=$(sinfo -h -N -o '%t' 2>/dev/null | grep -c '^idle' || true)
        if [ "$idle" -ge "$N" ]; then
            echo "slurmbox: $N node(s) idle"
            return 0
        fi
        sleep 0.5
    done
    echo "slurmbox: nodes did not come up; see $BOX/log" >&2
    sinfo -N >&2 || true
    exit 1
}

down() {
    if command -v squeue >/dev/null && [ -e "$CONF" ]; then
        squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
    fi
    # Read the pids first: a daemon removes its pid file as it starts to shut
    # down, and slurmd can then hang on SIGTERM (seen here with its network
    # namespace going), so what is still there after 3 s gets SIGKILL.
    pids=()
    for pidfile in "$BOX"/run/slurmd-*.pid "$BOX/run/slurmctld.pid"; do
        if [ -s "$pidfile" ]; then pids+=("$(cat "$pidfile")"); fi
        rm -f "$pidfile"
    done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 30); do
        alive=0
        for pid in "${pids[@]}"; do
            if [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then alive=1; fi
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    if [ -e "$BOX/run/munged.ours" ]; then
        pkill -x munged || true
        rm -f "$BOX/run/munged.ours"
    fi
    for i in $(seq 1 "$N"); do
        machine_down "cwnode$i" "cwveth$i"
    done
    ip link del "$BR" 2>/dev/null || true
    sed -i "/$MARK\$/d" /etc/hosts
    if [ -e "$CONF" ] && grep -q "$MARK" "$CONF"; then rm -f "$CONF"; fi
    rm -rf "$BOX/state"
    echo "slurmbox: down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
