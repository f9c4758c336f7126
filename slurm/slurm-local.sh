#!/usr/bin/env bash
# Single-node, loopback-only SLURM cluster for CI and for trying `peft-bench sweep --executor slurm`
# (Debian 12 / Slurm 22.05, run as root). Carried from the shared recipe; see README "Sweeps".
# Usage: slurm-local.sh install | up | down | status
#   SLURM_ACCOUNTING=1 -> also mariadb + slurmdbd so `sacct` works (submitit job states)
set -euo pipefail
BASE=${SLURM_LOCAL_DIR:-/tmp/slurm-local}   # state, spool, logs, pid files
ACCOUNTING=${SLURM_ACCOUNTING:-0}
CPUS=${SLURM_CPUS:-}                # e.g. 8: advertise more CPUs than exist (oversubscribe)
CONF=/etc/slurm/slurm.conf                         # default path: clients need no SLURM_CONF

install_pkgs() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  if [ "$ACCOUNTING" = 1 ]; then
    apt-get install -y -qq --no-install-recommends slurmdbd mariadb-server >/dev/null
  fi
}

write_conf() {
  local node nodeline acct extra=""
  node=$(hostname -s)
  mkdir -p "$BASE"/{state,spool,log} /etc/slurm
  # e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  nodeline=$(slurmd -C | head -n1)
  if [ -n "$CPUS" ]; then   # fake CPU count; config_overrides stops slurmd rejecting it
    nodeline="NodeName=$node CPUs=$CPUS ${nodeline##* }"   # keep RealMemory=...
    extra="SlurmdParameters=config_overrides"
  fi
  acct=accounting_storage/none; [ "$ACCOUNTING" = 1 ] && acct=accounting_storage/slurmdbd
  cat >"$CONF" <<EOF
ClusterName=ci
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# requeued jobs wait cred_expire s before restarting (default 120)
AuthInfo=cred_expire=10
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=$acct
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# run main+backfill scheduler every 1 s (defaults 60/30 s): array tasks/requeues start promptly
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
# SIGTERM->SIGKILL grace on cancel/timeout (default 30 s; submitit ignores SIGTERM)
KillWait=5
MailProg=/bin/true
${nodeline} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
${extra}
EOF
}

start_bg() {  # start_bg NAME CMD... : run in foreground mode, backgrounded; remember PID
  local name=$1; shift
  "$@" >"$BASE/log/$name.out" 2>&1 </dev/null &
  echo $! >"$BASE/$name.pid.mine"
}

wait_for() {  # wait_for TRIES CMD... (0.2 s between tries)
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  "$@"   # last try, with output, fails the script under set -e
}

up() {
  mkdir -p "$BASE/log"
  # --- munge: must run as user munge; key must be munge:munge 0600 ---
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /etc/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 0600 /etc/munge/munge.key
  start_bg munged setpriv --reuid=munge --regid=munge --clear-groups /usr/sbin/munged -F
  wait_for 50 bash -c 'munge -n | unmunge'

  write_conf
  # --- optional accounting: mariadb + slurmdbd ---
  if [ "$ACCOUNTING" = 1 ]; then
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    start_bg mariadbd /usr/sbin/mariadbd --user=mysql --skip-networking
    wait_for 100 mariadb-admin ping
    # Debian: root@localhost authenticates via unix_socket -> no password for slurmdbd (root)
    cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=$(hostname -s)
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$BASE/slurmdbd.pid
LogFile=$BASE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 0600 /etc/slurm/slurmdbd.conf
    start_bg slurmdbd slurmdbd -D
    wait_for 100 sacctmgr -n list cluster
    sacctmgr -n list cluster format=cluster | grep -qw ci || sacctmgr -i add cluster ci
  fi

  # --- slurm ---
  start_bg slurmctld slurmctld -D -i          # -i: ignore unreadable/stale state
  wait_for 100 bash -c 'scontrol ping | grep -q UP'
  start_bg slurmd slurmd -D
  wait_for 150 bash -c '[ "$(sinfo -h -N -o %t)" = idle ]'
  sinfo
}

down() {
  local d f pid
  # cancel jobs and let slurmd SIGKILL them (KillWait) *before* stopping it,
  # otherwise slurmstepd + job processes are orphaned
  if scontrol ping 2>/dev/null | grep -q UP; then
    squeue -h -o %A | xargs -r scancel || true
    for _ in $(seq 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  for d in slurmd slurmctld slurmdbd mariadbd munged; do
    f="$BASE/$d.pid.mine"; [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    fi
    rm -f "$f"; echo "stopped $d (pid $pid)"
  done
}

case "${1:-}" in
  install) install_pkgs ;;
  up) up ;;
  down) down ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
