#!/usr/bin/env bash
# Stop the local SLURM test cluster started by up.sh (slurmd, slurmctld,
# slurmdbd, mariadb, munged), each by its pid file. Leaves packages, config,
# the accounting database and controller state in place, so the next up.sh is
# fast. Safe to run when nothing is running.
#
# Usage: scripts/slurm/down.sh [--keep-base]   (--keep-base: leave mariadb + munged up)
set -uo pipefail
RUNDIR=/run/slurm
KEEP_BASE=0
[[ ${1:-} == --keep-base ]] && KEEP_BASE=1

# stop NAME PIDFILE: SIGTERM the process in PIDFILE if it is NAME, wait up to 20 s
stop() {
  local name=$1 pidfile=$2 pid i
  [[ -s $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || { rm -f "$pidfile"; return 0; }
  echo "slurm down.sh: stopping $name ($pid)"
  kill "$pid" 2>/dev/null
  for i in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  echo "slurm down.sh: $name ($pid) ignored SIGTERM, sending SIGKILL" >&2
  kill -9 "$pid" 2>/dev/null
}

stop slurmd    "$RUNDIR/slurmd.pid"
stop slurmctld "$RUNDIR/slurmctld.pid"
stop slurmdbd  "$RUNDIR/slurmdbd.pid"
if ((KEEP_BASE)); then exit 0; fi
# mariadbd exits on SIGTERM; mysqld_safe (its watchdog) then exits too.
stop mariadbd  /run/mysqld/mysqld.pid
stop munged    /run/munge/munged.pid
exit 0
