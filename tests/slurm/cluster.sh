#!/usr/bin/env bash
# A throwaway single-node Slurm 22.05 cluster on 127.0.0.1 (Debian's slurm-wlm + munge).
#
#   tests/slurm/cluster.sh start    # (re)creates $EPOCH_SLURM_DIR, starts munged, slurmctld,
#                                   # slurmd, proves a job runs, prints the client environment
#   tests/slurm/cluster.sh stop     # cancels every job, waits, stops the daemons by pid (idempotent)
#   tests/slurm/cluster.sh status   # what runs, sinfo, squeue
#
# Everything lives under EPOCH_SLURM_DIR (default /tmp/epoch-slurm-$UID); nothing is written
# to /etc. See tests/slurm/README.md for the knobs and the facts behind the settings.
set -euo pipefail

DIR=${EPOCH_SLURM_DIR:-/tmp/epoch-slurm-$(id -u)}
CTLD_PORT=${EPOCH_SLURM_CTLD_PORT:-16817}
SLURMD_PORT=${EPOCH_SLURMD_PORT:-16818}
NODE_CPUS=${EPOCH_SLURM_CPUS:-8}
NODE_MEM_MB=${EPOCH_SLURM_MEM_MB:-16384}
NODE_GPUS=${EPOCH_SLURM_GPUS:-4}
PARTITION=${EPOCH_SLURM_PARTITION:-epoch}
START_TIMEOUT=${EPOCH_SLURM_START_TIMEOUT:-30}
STOP_TIMEOUT=${EPOCH_SLURM_STOP_TIMEOUT:-30}

for v in CTLD_PORT SLURMD_PORT NODE_CPUS NODE_MEM_MB NODE_GPUS START_TIMEOUT STOP_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "cluster.sh: $v=${!v} is not a number" >&2; exit 2; }
done
[[ $PARTITION =~ ^[A-Za-z0-9_-]+$ ]] || { echo "cluster.sh: bad partition name '$PARTITION'" >&2; exit 2; }
((NODE_CPUS > 0 && NODE_MEM_MB > 0)) || { echo "cluster.sh: need at least 1 CPU and 1 MB" >&2; exit 2; }

ETC=$DIR/etc
RUN=$DIR/run             # our pid files: munged.pid slurmctld.pid slurmd.pid
LOG=$DIR/log
MUNGE_DIR=$DIR/munge     # socket folder: must be 0755 for munged
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
CONF=$ETC/slurm.conf
DAEMONS=(munged slurmctld slurmd)   # start order; stop is the reverse
STARTING=0                          # set while cmd_start launches: fail() then stops them

say() { printf 'cluster.sh: %s\n' "$*" >&2; }
# milliseconds since the epoch (bash 5's EPOCHREALTIME; no bc needed)
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
secs() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); }

# ---------------------------------------------------------------- processes
# alive PID NAME: the pid exists, is not a zombie, and is the expected program.
# (Orphans are reaped slowly here: kill -0 succeeds on a zombie, so read /proc/PID/stat.)
alive() {
  local pid=$1 name=$2 stat comm state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  comm=${stat#*(}; comm=${comm%%)*}
  state=${stat##*) }; state=${state%% *}
  [[ $state != Z && $state != X && $comm == "$name"* ]]
}

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }
running() { local p; p=$(pid_of "$1"); [[ -n $p ]] && alive "$p" "$1"; }

# stop_daemon NAME: SIGTERM the recorded pid, wait, SIGKILL if it lingers.
stop_daemon() {
  local name=$1 pid i
  pid=$(pid_of "$name")
  if [[ -n $pid ]] && alive "$pid" "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
      alive "$pid" "$name" || break
      sleep 0.1
    done
    if alive "$pid" "$name"; then
      say "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    say "stopped $name (pid $pid)"
  fi
  rm -f "$RUN/$name.pid"
}

# launch NAME LOGFILE CMD...: in the foreground of its own session, pid recorded.
launch() {
  local name=$1 out=$2; shift 2
  setsid "$@" </dev/null >>"$out" 2>&1 &
  local pid=$!
  echo "$pid" >"$RUN/$name.pid"
  # setsid execs in place (we are not a process-group leader), so $! is the daemon itself.
  sleep 0.05
  if ! alive "$pid" "$name"; then
    fail "$name exited at once" "$out"
  fi
}

fail() {
  local msg=$1; shift
  say "FAILED: $msg"
  local f
  for f in "$@"; do
    [[ -f $f ]] || continue
    echo "----- tail of $f" >&2
    tail -n 40 "$f" >&2
  done
  if ((STARTING)); then
    STARTING=0
    say "stopping what this start launched (logs kept in $LOG)"
    cmd_stop_quiet || true
  fi
  exit 1
}

# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds; 1 on timeout.
wait_for() {
  local secs=$1; shift
  local deadline=$(($(now_ms) + secs * 1000))
  until "$@" >/dev/null 2>&1; do
    (($(now_ms) > deadline)) && return 1
    sleep 0.1
  done
}

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# ---------------------------------------------------------------- config
ensure_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  ((${#missing[@]} == 0)) && return 0
  say "installing slurm-wlm munge (missing: ${missing[*]})"
  local SUDO=
  (($(id -u) == 0)) || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    slurm-wlm munge >&2
}

write_config() {
  local old_umask
  old_umask=$(umask)
  umask 022
  rm -rf "$DIR"   # throwaway: a broken node state would survive in StateSaveLocation
  mkdir -p "$DIR" "$ETC" "$RUN" "$LOG" "$MUNGE_DIR" "$DIR/dev" "$DIR/state" "$DIR/spool" "$DIR/jobs"
  chmod 0755 "$DIR" "$MUNGE_DIR"

  # munge: key 0600, owned by whoever runs munged.
  dd if=/dev/urandom of="$ETC/munge.key" bs=1024 count=1 status=none
  chmod 0600 "$ETC/munge.key"

  # Fake GPUs: gres needs device files; plain files are rejected, symlinks to /dev/null work.
  local i
  for ((i = 0; i < NODE_GPUS; i++)); do ln -s /dev/null "$DIR/dev/gpu$i"; done

  local gres_line="" gres_conf="AutoDetect=off"
  if ((NODE_GPUS > 0)); then
    gres_line="Gres=gpu:$NODE_GPUS"
    gres_conf+=$'\n'"NodeName=localhost Name=gpu File=$DIR/dev/gpu[0-$((NODE_GPUS - 1))]"
  fi
  printf '%s\n' "$gres_conf" >"$ETC/gres.conf"

  local user
  user=$(id -un)
  cat >"$CONF" <<EOF
# Generated by tests/slurm/cluster.sh -- a throwaway single-node cluster on 127.0.0.1.
ClusterName=epoch
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET

StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$RUN/slurmctld.self.pid
SlurmdPidFile=$RUN/slurmd.self.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.log

SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((NODE_MEM_MB / NODE_CPUS))
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
GresTypes=gpu
ReturnToService=2
EnforcePartLimits=ALL
SlurmdParameters=config_overrides
MinJobAge=300
KillWait=2
InactiveLimit=0
SlurmdTimeout=300
SlurmctldTimeout=120
MessageTimeout=10

NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$NODE_CPUS Sockets=1 CoresPerSocket=$NODE_CPUS ThreadsPerCore=1 RealMemory=$NODE_MEM_MB $gres_line State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

  cat >"$DIR/env.sh" <<EOF
# Source this to use the throwaway Slurm cluster in $DIR.
export SLURM_CONF=$CONF
# munged listens on a private socket; Slurm finds it through AuthInfo in slurm.conf.
# libmunge has no environment variable for it: use 'munge -S \$EPOCH_SLURM_MUNGE_SOCKET'.
export EPOCH_SLURM_MUNGE_SOCKET=$MUNGE_SOCKET
export EPOCH_SLURM_DIR=$DIR
export EPOCH_SLURM_PARTITION=$PARTITION
EOF
  umask "$old_umask"
}

# ---------------------------------------------------------------- checks
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_idle() { [[ $(sinfo -h -n localhost -o %T 2>/dev/null) == idle ]]; }
munge_ok() { munge -n -S "$MUNGE_SOCKET" </dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null; }
job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
job_done() { local s; s=$(job_state "$1"); [[ -n $s && $s != PENDING && $s != RUNNING && $s != CONFIGURING && $s != COMPLETING ]]; }

print_env() {
  echo "# Slurm cluster in $DIR is up. For a client:"
  grep '^export' "$DIR/env.sh"
}

# ---------------------------------------------------------------- commands
cmd_start() {
  local t0
  t0=$(now_ms)
  if [[ -f $DIR/env.sh ]] && running munged && running slurmctld && running slurmd; then
    say "already running in $DIR"
    print_env
    return 0
  fi
  [[ -d $DIR ]] && cmd_stop_quiet
  ensure_packages

  local p
  for p in "$CTLD_PORT" "$SLURMD_PORT"; do
    port_busy "$p" && fail "TCP port $p is in use (set EPOCH_SLURM_CTLD_PORT / EPOCH_SLURMD_PORT)"
  done

  write_config
  export SLURM_CONF=$CONF
  STARTING=1

  launch munged "$LOG/munged.log" munged -F --force --key-file="$ETC/munge.key" \
    --socket="$MUNGE_SOCKET" --pid-file="$RUN/munged.self.pid" \
    --seed-file="$MUNGE_DIR/munged.seed" --log-file="$LOG/munged.log"
  wait_for "$START_TIMEOUT" munge_ok || fail "munged does not answer on $MUNGE_SOCKET" "$LOG/munged.log"

  launch slurmctld "$LOG/slurmctld.out" slurmctld -D -c -f "$CONF"
  wait_for "$START_TIMEOUT" ctld_up \
    || fail "slurmctld does not answer on port $CTLD_PORT" "$LOG/slurmctld.log" "$LOG/slurmctld.out"

  launch slurmd "$LOG/slurmd.out" slurmd -D -N localhost -f "$CONF"
  if ! wait_for "$START_TIMEOUT" node_idle; then
    sinfo -N -l >&2 || true
    scontrol show node localhost >&2 || true
    fail "node localhost is not idle after ${START_TIMEOUT}s" "$LOG/slurmd.log" "$LOG/slurmd.out" "$LOG/slurmctld.log"
  fi
  local t_idle
  t_idle=$(now_ms)

  # Prove a job runs.
  local out jobid state
  out=$(sbatch --parsable -p "$PARTITION" -J epoch-smoke -D "$DIR/jobs" -o "$DIR/jobs/smoke-%j.out" --wrap true 2>&1) \
    || fail "sbatch --wrap true: $out" "$LOG/slurmctld.log"
  jobid=${out%%;*}
  wait_for "$START_TIMEOUT" job_done "$jobid" \
    || fail "smoke job $jobid did not finish (state $(job_state "$jobid"))" "$LOG/slurmctld.log" "$LOG/slurmd.log"
  state=$(job_state "$jobid")
  [[ $state == COMPLETED ]] || fail "smoke job $jobid ended $state" "$LOG/slurmctld.log" "$LOG/slurmd.log"
  say "smoke job $jobid: $(scontrol show job "$jobid" | grep -o 'JobState=[A-Z]* Reason=[^ ]*') $(scontrol show job "$jobid" | grep -o 'ExitCode=[0-9:]*')"

  STARTING=0
  say "up in $(secs $(($(now_ms) - t0)))s (node idle after $(secs $((t_idle - t0)))s);" \
    "pids: munged $(pid_of munged) slurmctld $(pid_of slurmctld) slurmd $(pid_of slurmd)"
  print_env
}

cancel_all_jobs() {
  running slurmctld || return 0
  export SLURM_CONF=$CONF
  local ids i
  ids=$(squeue -h -o %A 2>/dev/null || true)
  [[ -z $ids ]] && return 0
  say "cancelling jobs: ${ids//$'\n'/ }"
  # shellcheck disable=SC2086
  scancel $ids 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    [[ -z $(squeue -h -o %A 2>/dev/null) ]] && return 0
    sleep 0.1
  done
  say "jobs still listed after ${STOP_TIMEOUT}s: $(squeue -h -o '%A:%T' | tr '\n' ' ')"
}

cmd_stop_quiet() {
  cancel_all_jobs
  local i
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[i]}"; done
}

cmd_stop() {
  if [[ ! -d $DIR ]]; then
    say "nothing to stop ($DIR does not exist)"
    return 0
  fi
  cmd_stop_quiet
  say "stopped (state and logs kept in $DIR)"
}

cmd_status() {
  echo "EPOCH_SLURM_DIR=$DIR"
  local n p rc=0
  for n in "${DAEMONS[@]}"; do
    p=$(pid_of "$n")
    if [[ -n $p ]] && alive "$p" "$n"; then
      echo "$n: running (pid $p)"
    elif [[ -n $p ]]; then
      echo "$n: dead (pid $p recorded)"; rc=1
    else
      echo "$n: not running"; rc=1
    fi
  done
  if running slurmctld; then
    export SLURM_CONF=$CONF
    echo "--- sinfo"
    sinfo -N -o '%N %P %T %c %m %G' || true
    echo "--- squeue"
    squeue -o '%A %j %u %T %M %b %R' || true
  fi
  return $rc
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
