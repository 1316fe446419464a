# Shared by scripts/bench-kafka and scripts/load-throughput (sourced, not run): the tansu
# Kafka-protocol broker that scripts/test installs, started on a free loopback port, and
# the figures of a `tidemark run` (its throughput line, GNU time's peak RSS).

TANSU=${TIDEMARK_TANSU:-target/tools/tansu/bin/tansu}
TANSU_PID=
BROKERS=

# Whether the broker is installed.
have_tansu() { [[ -x $TANSU ]]; }

# start_tansu DIR [STORAGE]: a broker on a free loopback port, storing under DIR
# (STORAGE memory, the default: tansu's memory engine; sqlite: its durable engine, a file
# in DIR), logging to DIR/broker.log. Sets TANSU_PID and BROKERS (host:port); fails if it
# does not listen within 10 s.
start_tansu() {
    local dir=$1 storage=${2:-memory} engine port tansu waited=0
    case $storage in
        memory) engine="memory://tansu/" ;;
        sqlite) engine="sqlite://tansu.db" ;;
        *) echo "unknown tansu storage '$storage' (memory or sqlite)" >&2; return 1 ;;
    esac
    tansu=$(realpath "$TANSU")
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$dir"
    (cd "$dir" && exec "$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "$engine" >broker.log 2>&1) &
    TANSU_PID=$!
    BROKERS=127.0.0.1:$port
    until (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$TANSU_PID" 2>/dev/null || ((waited++ >= 100)); then
            tail -n 20 "$dir/broker.log" >&2
            echo "the tansu broker did not listen on $BROKERS within 10 s; the end of its log is above" >&2
            return 1
        fi
        sleep 0.1
    done
}

stop_tansu() {
    if [[ -n $TANSU_PID ]] && kill -0 "$TANSU_PID" 2>/dev/null; then
        kill "$TANSU_PID" 2>/dev/null || true
        wait "$TANSU_PID" 2>/dev/null || true
    fi
    TANSU_PID=
}

# create_topic NAME PARTITIONS: on the broker started above.
create_topic() {
    "$TANSU" topic create --broker "tcp://$BROKERS" --partitions "$2" "$1" >/dev/null
}

# Records/s of the `throughput <records> records in <seconds> s` line in file $1.
rate_of() { sed -n 's/.*throughput \([0-9]*\) records in \([0-9.]*\) s.*/\1 \2/p' "$1" | awk '{printf "%.0f\n", $1/$2}'; }

# Peak resident set size in kB from GNU `time -v` output in file $1.
peak_rss_kb() { sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\).*/\1/p' "$1" | tail -n 1; }

# The same in GB, two decimals.
rss_of() { peak_rss_kb "$1" | awk '{printf "%.2f\n", $1/1048576}'; }
