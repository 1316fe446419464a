# Shared by scripts/load-query, scripts/load-freshness and scripts/load-throughput
# (sourced, not run): build, start a cluster of one worker process (THREADS timely
# threads) and a coordinator on loopback ports the kernel picks, notice when one of them
# dies, stop both on exit, machine facts, medians, and replacing one section of
# docs/BENCHMARKS.md.
#
# The caller sets NAME (for log lines) before sourcing.

log() { echo "[$NAME] $*" >&2; }
die() { echo "[$NAME] ERROR: $*" >&2; exit 1; }

command -v cargo >/dev/null 2>&1 || die "cargo is missing: install the Rust toolchain first"
command -v python3 >/dev/null 2>&1 || die "python3 is missing (apt-get install python3-minimal)"

TMP=$(mktemp -d)
WORKER_PID=
COORDINATOR_PID=
stop_cluster() {
    local pid
    for pid in $COORDINATOR_PID $WORKER_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    WORKER_PID= COORDINATOR_PID=
}
trap 'stop_cluster; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

ENGINE=target/release/tidemark
COORDINATOR=target/release/tidemark-coordinator
LOAD=target/release/tidemark-load

build() {
    log "building: cargo build --release -p tidemark-worker -p tidemark-coordinator -p tidemark-load"
    cargo build --release -p tidemark-worker -p tidemark-coordinator -p tidemark-load >&2
    [[ -x $ENGINE && -x $COORDINATOR && -x $LOAD ]] || die "the build did not produce $ENGINE, $COORDINATOR and $LOAD"
}

free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Fails loudly if the worker or the coordinator is gone, with the end of its log.
check_alive() {
    local what pid logfile
    for what in worker coordinator; do
        if [[ $what == worker ]]; then pid=$WORKER_PID logfile=$TMP/worker.log; else pid=$COORDINATOR_PID logfile=$TMP/coordinator.log; fi
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            local status=0
            wait "$pid" 2>/dev/null || status=$?
            grep -Ev '^ *([0-9]+: | at )' "$logfile" | tail -n 20 >&2
            die "the $what process (pid $pid) died (exit status $status) $1; the end of its log (without backtrace lines) is above"
        fi
    done
}

# Waits until the log $2 of process $1 (worker or coordinator) says where it listens;
# prints the port.
listening_port() {
    local waited=0 line
    until line=$(grep -s -m 1 "^listening on " "$2"); do
        check_alive "while starting"
        ((waited++ < 600)) || die "the $1 did not listen within 60 s"
        sleep 0.1
    done
    # "listening on HOST:PORT" with perhaps more after it (the coordinator adds its metrics port).
    line=${line#listening on }
    line=${line%% *}
    echo "${line##*:}"
}

# Starts a fresh cluster; sets TARGET, WORKER_CMD, COORDINATOR_CMD. Both processes bind
# port 0 and say which port they got, so no port is picked here and then lost to another
# socket before it is bound. (The timely address is not bound by a single process.)
start_cluster() {
    stop_cluster
    local timely grpc public
    timely=$(free_ports 1)
    # A log left by the previous run could be read before the new process truncates it
    # (the redirection happens in the background child).
    rm -f "$TMP/worker.log" "$TMP/coordinator.log"
    # A fresh cluster starts with an empty ingest log (a restart of $WORKER_CMD keeps it).
    rm -rf "$TMP/data"
    WORKER_CMD="$ENGINE worker -w $THREADS --processes 1 --listen 127.0.0.1:0 --peers 127.0.0.1:$timely --data-dir $TMP/data${WORKER_FLAGS:+ $WORKER_FLAGS}"
    # When the worker process started (wall clock, ms), for tests that time its start.
    WORKER_STARTED_MS=$(date +%s%3N)
    $WORKER_CMD >"$TMP/worker.log" 2>&1 &
    WORKER_PID=$!
    grpc=$(listening_port worker "$TMP/worker.log")
    COORDINATOR_CMD="$COORDINATOR --workers 127.0.0.1:$grpc --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0"
    $COORDINATOR_CMD >"$TMP/coordinator.log" 2>&1 &
    COORDINATOR_PID=$!
    public=$(listening_port coordinator "$TMP/coordinator.log")
    TARGET=http://127.0.0.1:$public
    local status=0
    "$LOAD" wait --target "$TARGET" --timeout 60 >/dev/null 2>"$TMP/wait.log" || status=$?
    if ((status != 0)); then
        check_alive "while starting"
        cat "$TMP/wait.log" >&2
        grep -Ev '^ *([0-9]+: | at )' "$TMP/coordinator.log" | tail -n 5 >&2
        die "the coordinator at $TARGET did not list its views (tidemark-load wait exited with status $status)"
    fi
    check_alive "while starting"
}

# Runs the load tool (arguments after the subcommand) against a fresh cluster; its JSON
# line is appended to the file $1. Progress goes to stderr. A function `after_run`, if the
# caller defines one, runs before the cluster stops (to read its peak memory, say).
run_once() {
    local out=$1
    shift
    start_cluster
    LAST_CMD="$LOAD $* --target $TARGET"
    log "  $LAST_CMD"
    if ! "$LOAD" "$@" --target "$TARGET" >"$TMP/run.json" 2>"$TMP/run.err"; then
        tail -n 30 "$TMP/run.err" >&2
        check_alive "during the run"
        die "tidemark-load failed: $LAST_CMD"
    fi
    check_alive "during the run"
    grep -E '^\[.*\] (ack|markers|offered|lookups|ingest|range)' "$TMP/run.err" | sed 's/^/    /' >&2 || true
    tail -n 1 "$TMP/run.json" >>"$out"
    if declare -F after_run >/dev/null; then after_run; fi
    stop_cluster
}

LOAD_BEFORE=
# What else runs on the machine during a test (a test may set it before calling machine_facts).
MACHINE_SHARED=${MACHINE_SHARED:-the load tool, the worker and the coordinator all run on it}
machine_facts() {
    local cpu mem commit
    cpu=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    mem=$(awk '/^MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git status --porcelain --untracked-files=no -- . ':!docs' 2>/dev/null) ]]; then commit="$commit (with uncommitted changes)"; fi
    echo "- Machine: $(nproc) CPUs ($cpu), $mem GiB memory, shared with other work ($MACHINE_SHARED); load average $LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after"
    echo "- Toolchain: $(rustc --version); release profile"
    echo "- Commit: $commit"
}

# Median over the JSON lines of file $1 of the field $2 (and, with $3 = range, "min-max").
median() {
    python3 - "$@" <<'EOF'
import json, statistics, sys
path, field = sys.argv[1:3]
values = [json.loads(line)[field] for line in open(path) if line.strip()]
if isinstance(values[0], bool):
    print(f"{sum(values)}/{len(values)}")
elif len(sys.argv) > 3:
    print(f"{min(values):.0f}-{max(values):.0f}")
else:
    m = statistics.median(values)
    print(f"{m:.0f}" if m >= 100 else f"{m:.1f}")
EOF
}

# Sum over the JSON lines of file $1 of the field $2.
total() {
    python3 -c 'import json, sys; print(sum(json.loads(l)[sys.argv[2]] for l in open(sys.argv[1]) if l.strip()))' "$1" "$2"
}

# Puts the Markdown section in file $1 into docs/BENCHMARKS.md, replacing the section
# with the same "## " title (or appending it).
write_section() {
    local doc=docs/BENCHMARKS.md
    [[ -f $doc ]] || die "$doc is missing"
    python3 - "$doc" "$1" <<'EOF'
import sys
doc_path, section_path = sys.argv[1:3]
doc = open(doc_path).read().splitlines(keepends=True)
section = open(section_path).read().rstrip("\n") + "\n"
title = section.splitlines()[0].strip()
start = next((i for i, line in enumerate(doc) if line.strip() == title), None)
if start is None:
    text = "".join(doc).rstrip("\n") + "\n\n" + section
else:
    end = next((i for i in range(start + 1, len(doc)) if doc[i].startswith("## ")), len(doc))
    rest = "".join(doc[end:])
    text = "".join(doc[:start]) + section + ("\n" + rest if rest else "")
open(doc_path, "w").write(text)
EOF
    log "wrote the section to $doc"
}

positive_integers() {
    local v
    for v in "$@"; do
        [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
    done
}

# A Python virtualenv in target/bench-venv with the peers and the charting library at
# pinned versions, installed once and reused; sets PY to its interpreter.
BENCH_PACKAGES=(pyspark==4.3.0 duckdb==2.0.0 matplotlib==3.11.2)
bench_venv() {
    local venv=target/bench-venv
    PY=$venv/bin/python
    "$PY" -c 'import pyspark, duckdb, matplotlib' 2>/dev/null && return 0
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        [[ $(id -u) -eq 0 ]] || die "python3-venv is missing; install it (apt-get install python3-venv) or run as root"
        log "installing python3-venv with apt"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    log "installing ${BENCH_PACKAGES[*]} into $venv (once)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "${BENCH_PACKAGES[@]}" >&2
}
