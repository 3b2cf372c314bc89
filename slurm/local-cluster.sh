#!/usr/bin/env bash
# A throwaway multi-node Slurm cluster on this one machine, for tests and the demo.
#
#   slurm/local-cluster.sh up [N]   start munged, slurmctld and N slurmd "virtual nodes" (default 4)
#   slurm/local-cluster.sh status   sinfo of the local cluster
#   slurm/local-cluster.sh down     stop exactly the daemons this script started (by pid file)
#   slurm/local-cluster.sh env      print the export line that points Slurm clients at this cluster
#
# Everything (config, state, spool, logs, pid files) lives under one directory, $CLUSTER_DIR (default:
# <repo>/.cluster), on non-default ports, with its own munge socket and key, so a site Slurm or munge on
# the same machine is never touched. munged runs as the unprivileged `munge` user, which may not be able
# to enter the checkout (a clone below a 0700 directory such as `mktemp -d`), so munge's key, socket, pid
# and log live in $MUNGE_DIR under /run, one per cluster directory. Each virtual node is one slurmd started with
# `slurmd -N nodeK` on its own port; each has one fake GPU (File=/dev/null) so --gpus-per-node works.
#
# CPU pinning: every slurmd is started under `taskset` with its own core(s) (see node_cpus), and the
# tasks of its jobs inherit that affinity, so a 2-node job really runs on 2 cores. Slurm's own binding
# (TaskPlugin=task/affinity or task/cgroup) cannot do this here: each virtual node believes it owns the
# whole machine and binds its first task to CPU 0, so all nodes' tasks would share core 0.
# Facts this relies on are in shared/PLATFORM-NOTES.md (TmpFS per node for PMIx, gres File=, ...).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
CLUSTER_DIR="${CLUSTER_DIR:-$REPO_DIR/.cluster}"
CONF="$CLUSTER_DIR/etc/slurm.conf"
# Ports well away from Slurm's defaults (6817/6818) so a site installation keeps working.
CTLD_PORT="${CLUSTER_CTLD_PORT:-17817}"
SLURMD_BASE_PORT="${CLUSTER_SLURMD_BASE_PORT:-17000}"
# Where job ids start: two local clusters on one machine (other checkouts, other CLUSTER_DIRs and ports)
# then give their jobs different ids, so the tf engine's job-id-derived ports differ too.
FIRST_JOB_ID="${CLUSTER_FIRST_JOB_ID:-1}"
PARTITION="debug"
# Preemption as shared clusters do it (docs/training.md, "Preemption by a higher-priority partition"):
# a job in partition "urgent" (same nodes, higher PriorityTier) requeues the "debug" jobs it needs room
# from, after SIGTERM and GRACE_TIME seconds.
URGENT_PARTITION="urgent"
GRACE_TIME="${CLUSTER_GRACE_TIME:-30}"
# Accounting (sacct): a private MariaDB server and slurmdbd, on ports derived from the ctld port so two
# clusters never clash; skipped (accounting_storage/none) when the packages are missing.
DBD_PORT="${CLUSTER_DBD_PORT:-$((CTLD_PORT + 1))}"
DB_PORT="${CLUSTER_DB_PORT:-$((CTLD_PORT + 2))}"
DB_DIR="$CLUSTER_DIR/db"
MUNGE_DIR="${CLUSTER_MUNGE_DIR:-/run/stockpredict-munge/$(printf '%s' "$CLUSTER_DIR" | sha256sum | cut -c1-16)}"

die() { echo "local-cluster: $*" >&2; exit 1; }
say() { echo "local-cluster: $*"; }

require_root_and_packages() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (slurmd runs jobs as their owner); try: sudo make cluster-up"
    local missing=()
    for cmd in slurmctld slurmd munged sinfo srun mpirun taskset; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) || die "missing ${missing[*]}; install them with: make system-deps"
    id munge >/dev/null 2>&1 || die "no 'munge' user; install munge with: make system-deps"
}

# Accounting needs slurmdbd, its MySQL plugin and a MariaDB server (`make system-deps` installs them).
have_accounting() {
    command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null \
        && command -v mariadb >/dev/null && ls /usr/lib/*/slurm-wlm/accounting_storage_mysql.so >/dev/null 2>&1
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Before a fresh start: every port this cluster would listen on must be free. A port held by another
# checkout's local cluster (a `make demo` left running elsewhere) or by a site daemon is one line naming
# it and the fix, not a daemon that dies later with "Address already in use" in its log.
require_free_ports() {
    local accounting=$1 n=$2 port ports=("$CTLD_PORT") k
    # This checkout's own daemons that still run are reused below, so their ports are theirs.
    if ((accounting)); then
        pid_alive "$CLUSTER_DIR/run/slurmdbd.pid" || ports+=("$DBD_PORT")
        pid_alive "$DB_DIR/mariadbd.pid" || ports+=("$DB_PORT")
    fi
    for ((k = 1; k <= n; k++)); do
        pid_alive "$CLUSTER_DIR/run/slurmd-node$k.pid" || ports+=($((SLURMD_BASE_PORT + k)))
    done
    for port in "${ports[@]}"; do
        if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
            die "port $port is already in use (another checkout's local cluster? run make cluster-down there), or choose free ports: CLUSTER_CTLD_PORT=<p> CLUSTER_SLURMD_BASE_PORT=<q>"
        fi
    done
}

node_count() { cat "$CLUSTER_DIR/etc/nodes" 2>/dev/null || echo 0; }

# Cores per virtual node: the host's cores split evenly, at least one. With more nodes than cores the
# nodes wrap around and share (on 2 cores: node1 and node3 on core 0), so only up to $(nproc) nodes scale.
cpus_per_node() { local n="$1" c; c="$(nproc)"; echo $(( c / n > 0 ? c / n : 1 )); }

# The taskset CPU list of virtual node K (1-based) of N, e.g. "2-3" for node 2 of 2 on 4 cores.
node_cpus() {
    local k="$1" n="$2" per first c
    c="$(nproc)"
    per="$(cpus_per_node "$n")"
    first=$(( ((k - 1) * per) % c ))
    if (( per == 1 )); then echo "$first"; else echo "$first-$((first + per - 1))"; fi
}

node_memory_mb() {
    local total_kb
    total_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    echo $(( total_kb / 1024 / 2 / $1 ))
}

write_config() {
    local n="$1" accounting="$2" host
    host="$(hostname -s)"
    mkdir -p "$CLUSTER_DIR"/{etc,state,log,run,spool,tmp} "$MUNGE_DIR"
    for ((k = 1; k <= n; k++)); do mkdir -p "$CLUSTER_DIR/spool/node$k" "$CLUSTER_DIR/tmp/node$k"; done
    echo "$n" >"$CLUSTER_DIR/etc/nodes"
    for ((k = 1; k <= n; k++)); do echo "node$k $(node_cpus "$k" "$n")"; done >"$CLUSTER_DIR/etc/node-cpus"
    cat >"$CONF" <<EOF
# Generated by slurm/local-cluster.sh for a $n-node cluster on $host; do not edit by hand.
ClusterName=stockpredict-local
FirstJobId=$FIRST_JOB_ID
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_DIR/munge.socket
CredType=cred/munge
StateSaveLocation=$CLUSTER_DIR/state
SlurmctldPidFile=$CLUSTER_DIR/run/slurmctld.pid
SlurmctldLogFile=$CLUSTER_DIR/log/slurmctld.log
# %n expands to the virtual node's name: every slurmd gets its own spool, pid, log and TmpFS.
# A per-node TmpFS keeps PMIx of two virtual nodes from colliding on /tmp/spmix_appdir_*.
SlurmdSpoolDir=$CLUSTER_DIR/spool/%n
SlurmdPidFile=$CLUSTER_DIR/run/slurmd-%n.pid
SlurmdLogFile=$CLUSTER_DIR/log/slurmd-%n.log
TmpFS=$CLUSTER_DIR/tmp/%n
ProctrackType=proctrack/linuxproc
# task/none: Slurm binds nothing; each slurmd's taskset affinity (etc/node-cpus) is what tasks inherit.
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
$(if [[ "$accounting" == 1 ]]; then cat <<ACCT
# Accounting through this cluster's own slurmdbd (sacct); jobacct_gather/linux records TotalCPU and MaxRSS.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# For accounting_storage/slurmdbd this names the munge socket (the default is the system one).
AccountingStoragePass=$MUNGE_DIR/munge.socket
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
ACCT
else cat <<ACCT
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ACCT
fi)
JobCompType=jobcomp/none
MpiDefault=none
GresTypes=gpu
ReturnToService=2
SlurmdTimeout=30
KillWait=5
InactiveLimit=0
MinJobAge=600
SchedulerParameters=sched_interval=2
# Partition-priority preemption: a pending "urgent" job requeues running "debug" jobs on the nodes it needs.
# Slurm first sends SIGCONT + SIGTERM to the job's tasks, waits GraceTime (set per partition below), then
# SIGTERM + SIGKILL (after KillWait) to the tasks and the batch shell, and requeues the job.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# RealMemory/DefMemPerNode: half of the machine's memory shared out over the virtual nodes, so a job's
# ReqMem (sacct) is a real request and the report's memory efficiency means something. Memory is not a
# consumable here (CR_Core), so it never keeps a job from starting.
NodeName=node[1-$n] NodeHostname=$host Port=[$((SLURMD_BASE_PORT + 1))-$((SLURMD_BASE_PORT + n))] CPUs=$(cpus_per_node "$n") \
    RealMemory=$(node_memory_mb "$n") Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=node[1-$n] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO \
    DefMemPerNode=$(node_memory_mb "$n") \
    PriorityTier=1 PreemptMode=REQUEUE GraceTime=$GRACE_TIME
PartitionName=$URGENT_PARTITION Nodes=node[1-$n] MaxTime=INFINITE State=UP OverSubscribe=NO \
    PriorityTier=10 PreemptMode=OFF DefMemPerNode=$(node_memory_mb "$n")
EOF
    # Fake GPUs: File=/dev/null makes the configured count match what slurmd "finds".
    cat >"$CLUSTER_DIR/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=node[1-$n] Name=gpu File=/dev/null
EOF
}

start_munge() {
    local dir="$MUNGE_DIR"
    if pid_alive "$dir/munged.pid"; then return; fi
    if [[ ! -f "$dir/munge.key" ]]; then
        head -c 1024 /dev/urandom >"$dir/munge.key"
    fi
    chown -R munge:munge "$dir"
    chmod 755 "$dir"  # clients (sbatch, srun) reach the socket through it; only munge may write
    chmod 400 "$dir/munge.key"
    # --force: munged refuses socket paths below world-writable (sticky) directories such as /tmp.
    runuser -u munge -- munged --force \
        --socket="$dir/munge.socket" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
        --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
}

# A private MariaDB server (datadir, socket, pid, log under $DB_DIR, TCP only on 127.0.0.1:$DB_PORT) and
# slurmdbd on $DBD_PORT. Every fresh start empties the accounting database (slurmctld -i restarts the
# job ids too), then registers the cluster.
start_accounting() {
    local t0=$SECONDS pass deadline sql=(mariadb --no-defaults --socket="$DB_DIR/mariadbd.sock" -u root)
    mkdir -p "$DB_DIR"
    if [[ ! -d "$DB_DIR/data/mysql" ]]; then
        mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR/data" --auth-root-authentication-method=socket \
            --skip-test-db >"$DB_DIR/install.log" 2>&1 || die "mariadb-install-db failed; see $DB_DIR/install.log"
    fi
    if ! pid_alive "$DB_DIR/mariadbd.pid"; then
        mariadbd --no-defaults --user=root --datadir="$DB_DIR/data" --socket="$DB_DIR/mariadbd.sock" \
            --pid-file="$DB_DIR/mariadbd.pid" --log-error="$DB_DIR/mariadbd.log" --port="$DB_PORT" \
            --bind-address=127.0.0.1 --skip-name-resolve --innodb-buffer-pool-size=32M \
            --innodb-log-file-size=16M --innodb-lock-wait-timeout=900 --max-connections=50 </dev/null >/dev/null 2>&1 &
        disown
    fi
    deadline=$((SECONDS + 60))
    until "${sql[@]}" -e 'SELECT 1' >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "mariadbd did not start within 60 s; see $DB_DIR/mariadbd.log"
        sleep 0.3
    done
    [[ -f "$DB_DIR/pass" ]] || (umask 077; head -c 24 /dev/urandom | sha256sum | cut -c1-32 >"$DB_DIR/pass")
    pass="$(cat "$DB_DIR/pass")"
    "${sql[@]}" -e "DROP DATABASE IF EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    (umask 077; cat >"$CLUSTER_DIR/etc/slurmdbd.conf" <<EOF
# Generated by slurm/local-cluster.sh; do not edit by hand (mode 600: it holds the database password).
AuthType=auth/munge
AuthInfo=socket=$MUNGE_DIR/munge.socket
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$CLUSTER_DIR/run/slurmdbd.pid
LogFile=$CLUSTER_DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "$CLUSTER_DIR/etc/slurmdbd.conf"
    pid_alive "$CLUSTER_DIR/run/slurmdbd.pid" || SLURM_CONF="$CONF" slurmdbd  # reads slurmdbd.conf next to slurm.conf
    deadline=$((SECONDS + 60))
    until SLURM_CONF="$CONF" sacctmgr -n list cluster >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "slurmdbd did not answer within 60 s; see $CLUSTER_DIR/log/slurmdbd.log"
        sleep 0.3
    done
    SLURM_CONF="$CONF" sacctmgr -i add cluster stockpredict-local >/dev/null
    say "accounting: slurmdbd on port $DBD_PORT, MariaDB on 127.0.0.1:$DB_PORT (started in $((SECONDS - t0)) s)"
}

wait_for_nodes() {
    local n="$1" deadline=$((SECONDS + 60)) idle
    while ((SECONDS < deadline)); do
        idle="$(SLURM_CONF="$CONF" sinfo -h -N -t idle,mixed,allocated -o %N 2>/dev/null | sort -u | wc -l || true)"
        if ((idle >= n)); then return 0; fi
        sleep 1
    done
    SLURM_CONF="$CONF" sinfo -N -l >&2 || true
    die "nodes did not become idle within 60 s; see $CLUSTER_DIR/log/"
}

# A virtual node whose slurmd died (killed, as in a node-loss test) gets its slurmd back, then leaves the
# DOWN state Slurm put it in after SlurmdTimeout (state=resume; an error if it was not down, ignored).
restart_dead_nodes() {
    local k n
    n="$(node_count)"
    for ((k = 1; k <= n; k++)); do
        pid_alive "$CLUSTER_DIR/run/slurmd-node$k.pid" && continue
        SLURM_CONF="$CONF" taskset -c "$(node_cpus "$k" "$n")" slurmd -N "node$k"
        SLURM_CONF="$CONF" scontrol update nodename="node$k" state=resume 2>/dev/null || true
        say "restarted the slurmd of node$k and returned it to service"
    done
}

cmd_up() {
    local n="${1:-4}"
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "NODES must be a positive integer, got '$n'"
    require_root_and_packages
    if pid_alive "$CLUSTER_DIR/run/slurmctld.pid"; then
        # A running cluster with at least N nodes serves: never shrink it under someone's jobs.
        if ! grep -q "^PartitionName=$URGENT_PARTITION " "$CONF" 2>/dev/null; then
            say "running with a configuration from before the '$URGENT_PARTITION' partition; restarting"
            cmd_down
        elif (( $(node_count) >= n )); then
            say "already running with $(node_count) nodes"
            restart_dead_nodes
            wait_for_nodes "$(node_count)"
            return
        else
            say "running with $(node_count) nodes; restarting with $n"
            cmd_down
        fi
    fi
    local accounting=0
    if have_accounting; then accounting=1; fi
    require_free_ports "$accounting" "$n"
    write_config "$n" "$accounting"
    start_munge
    export SLURM_CONF="$CONF"
    if ((accounting)); then
        start_accounting
    else
        say "accounting off (no sacct): slurmdbd or mariadb-server is not installed; make system-deps installs them"
    fi
    # -i: ignore state from an earlier run, so stale jobs and nodes never block a fresh start.
    slurmctld -i
    for ((k = 1; k <= n; k++)); do
        # The node's tasks inherit this affinity (TaskPlugin=task/none leaves it alone).
        pid_alive "$CLUSTER_DIR/run/slurmd-node$k.pid" \
            || taskset -c "$(node_cpus "$k" "$n")" slurmd -N "node$k"
    done
    wait_for_nodes "$n"
    say "up: $n nodes, partition '$PARTITION' (preemptible, GraceTime ${GRACE_TIME} s) and '$URGENT_PARTITION', cores per node: $(paste -sd' ' "$CLUSTER_DIR/etc/node-cpus")"
    (( n <= $(nproc) )) || say "note: $n nodes on $(nproc) cores share cores; only up to $(nproc) nodes scale"
    say "Point Slurm commands at it with:"
    echo "  export SLURM_CONF=$CONF"
}

stop_pidfile() {
    local f="$1" pid
    pid_alive "$f" || { rm -f "$f"; return 0; }
    pid="$(cat "$f")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
}

cmd_down() {
    local f
    for f in "$CLUSTER_DIR"/run/slurmd-*.pid; do [[ -e "$f" ]] && stop_pidfile "$f"; done
    stop_pidfile "$CLUSTER_DIR/run/slurmctld.pid"
    stop_pidfile "$CLUSTER_DIR/run/slurmdbd.pid"
    stop_pidfile "$DB_DIR/mariadbd.pid"
    stop_pidfile "$MUNGE_DIR/munged.pid"
    say "down"
}

cmd_status() {
    pid_alive "$CLUSTER_DIR/run/slurmctld.pid" || die "not running; start it with: make cluster-up"
    SLURM_CONF="$CONF" sinfo -N -o "%N %P %T %c %G"
    echo "cores (taskset) per node: $(paste -sd' ' "$CLUSTER_DIR/etc/node-cpus" 2>/dev/null)"
    SLURM_CONF="$CONF" squeue
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 up [NODES] | down | status | env" ;;
esac
