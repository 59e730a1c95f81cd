#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, for CI tests that submit jobs (submitit, sbatch).
# Runs as root on Debian (bookworm); installs slurm-wlm and munge when missing; no systemd, no cgroups.
#   bash tools/slurm.sh up      # install, configure, start munged + slurmctld + slurmd; wait for the node to be idle
#   bash tools/slurm.sh status  # print sinfo; exit 0 when the node is idle/mixed/allocated
#   bash tools/slurm.sh down    # stop slurmd, slurmctld and munged (exit 0 even if none ran)
# One partition, `debug` (default, no time limit); one node with all CPUs, each job step may take one core.
set -euo pipefail

NODE=$(hostname -s)
CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd

die() {  # one line to stderr, then the tails of the logs that say why
  echo "slurm: $*" >&2
  for f in "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" /var/log/munge/munged.log; do
    [ -s "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}

node_state() { timeout 5 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true; }
healthy() { case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac; }
running() { ps -C "$1" -o stat= | grep -qv '^Z'; }  # zombies do not count: PID 1 may be slow to reap them

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
  local pkgs=(slurm-wlm munge) apt=(apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0)
  export DEBIAN_FRONTEND=noninteractive
  # The packages try to start their services; with no init system that only fails, so forbid it.
  local prc=/usr/sbin/policy-rc.d own_prc=0
  [ -e "$prc" ] || { printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod +x "$prc"; own_prc=1; }
  if ! "${apt[@]}" "${pkgs[@]}" >/tmp/slurm-apt.log 2>&1; then
    apt-get update -qq >>/tmp/slurm-apt.log 2>&1 || true
    "${apt[@]}" "${pkgs[@]}" >>/tmp/slurm-apt.log 2>&1 || { [ "$own_prc" = 1 ] && rm -f "$prc"; tail -n 20 /tmp/slurm-apt.log >&2; die "apt-get install ${pkgs[*]} failed"; }
  fi
  [ "$own_prc" = 1 ] && rm -f "$prc"
  return 0
}

start_munge() {
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
  chmod 0700 /etc/munge /var/lib/munge /var/log/munge; chmod 0755 /run/munge; chmod 0400 /etc/munge/munge.key
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    pkill -x munged 2>/dev/null || true; rm -f /run/munge/munge.socket.2*
    runuser -u munge -- munged || die "munged did not start"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "munge does not answer"
  fi
}

write_conf() {
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/^MemAvailable:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # MB, 10% below what is free
  mkdir -p /etc/slurm "$LOGDIR" "$STATE" "$SPOOL"
  cat >"$CONF" <<EOF
# Written by tools/slurm.sh: a one-node localhost cluster for CI.
ClusterName=ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=5
MpiDefault=none
MailProg=/bin/true
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

up() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  install_packages
  start_munge
  if running slurmctld && running slurmd && healthy; then
    echo "slurm: up (node $NODE, $(sinfo -h -n "$NODE" -o %c) cpus; already running)"; return 0
  fi
  pkill -x slurmd 2>/dev/null || true; pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 50); do running slurmd || running slurmctld || break; sleep 0.2; done
  write_conf
  slurmctld -c || die "slurmctld did not start"  # -c: forget jobs from before, which hold CPUs but run nowhere
  slurmd || die "slurmd did not start"
  local state="" end=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$end" ]; do
    running slurmctld || die "slurmctld exited"
    running slurmd || die "slurmd exited"
    state=$(node_state)
    case "$state" in
      idle) break ;;
      down*|drain*|fail*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
  done
  healthy || die "node $NODE is '${state:-not reported}' after 60 s, not idle"
  timeout 60 srun -N1 -n1 true || die "srun -N1 -n1 true failed"
  echo "slurm: up (node $NODE, $(sinfo -h -n "$NODE" -o %c) cpus)"
}

down() {
  local d ds=(slurmd slurmstepd slurmctld munged) ids
  ids=$(timeout 5 squeue -h -o %A 2>/dev/null || true)  # kill the jobs first, or their processes outlive slurm
  if [ -n "$ids" ]; then
    timeout 10 scancel -f -s KILL $ids 2>/dev/null || true
    for _ in $(seq 25); do [ -z "$(timeout 2 squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  pkill -9 -x slurmstepd 2>/dev/null || true  # it ignores SIGTERM
  for d in "${ds[@]}"; do pkill -x "$d" 2>/dev/null || true; done
  for _ in $(seq 25); do running slurmd || running slurmstepd || running slurmctld || running munged || break; sleep 0.2; done
  for d in "${ds[@]}"; do pkill -9 -x "$d" 2>/dev/null || true; done
  echo "slurm: down"
}

status() { timeout 10 sinfo || true; healthy; }

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: bash tools/slurm.sh up|down|status" >&2; exit 2 ;;
esac
