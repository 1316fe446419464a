# Shared by scripts/train-fraud and scripts/eval-fraud (sourced, not run).
#
# Needs NAME (the calling script's name) and the traffic settings EVENTS, RATE, USERS,
# FRAUD_RATE and TRAVEL_RATE; provides log, die, the release binary ($TIDEMARK), a Python
# with numpy, scikit-learn and matplotlib ($PYTHON, a virtualenv under target/, kept
# between runs), a temporary directory ($TMP), and traffic_views SEED, which generates
# traffic of that seed and replays it through every view: $TMP/events-SEED.jsonl,
# $TMP/labels-SEED.csv and $TMP/views-SEED.json.

log() { echo "[$NAME] $*" >&2; }
die() { echo "[$NAME] ERROR: $*" >&2; exit 1; }

for v in EVENTS RATE USERS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done

apt_install() {
    [[ $(id -u) -eq 0 ]] || die "$1 is missing; install it (apt-get install $2) or run as root"
    log "installing $2"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
command -v cargo >/dev/null 2>&1 || die "cargo is missing: install the Rust toolchain first"
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-minimal
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install "python3 venv" python3-venv

# The Python packages, pinned; the virtualenv is rebuilt when this list changes.
PY_PACKAGES="numpy==2.4.6 scikit-learn==1.9.1 matplotlib==3.11.2"
VENV=target/fraud-venv
if [[ ! -x $VENV/bin/python || "$(cat "$VENV/packages" 2>/dev/null)" != "$PY_PACKAGES" ]]; then
    log "setting up a Python virtualenv in $VENV ($PY_PACKAGES)"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "could not create a virtualenv in $VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q --disable-pip-version-check $PY_PACKAGES || die "pip install failed"
    echo "$PY_PACKAGES" >"$VENV/packages"
fi
PYTHON=$VENV/bin/python

log "building the release binary (cargo build --release -p tidemark-worker)"
cargo build --release --locked -q -p tidemark-worker || die "build failed"
TIDEMARK=target/release/tidemark

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

GEN_FLAGS=(--events "$EVENTS" --rate "$RATE" --users "$USERS" --fraud-rate "$FRAUD_RATE" --travel-rate "$TRAVEL_RATE")

traffic_views() {
    local seed=$1
    log "seed $seed: generating $EVENTS records (simulated rate $RATE/s, $USERS users)"
    "$TIDEMARK" generate --seed "$seed" "${GEN_FLAGS[@]}" -o "$TMP/events-$seed.jsonl" --labels-out "$TMP/labels-$seed.csv" \
        || die "tidemark generate failed"
    # Minute ticks: at a few simulated events per second, 10 ms ticks would make almost
    # every record a time of its own. The final views do not depend on the tick.
    log "seed $seed: replaying them through every view (tidemark run --input --tick-ms 60000)"
    "$TIDEMARK" run --input "$TMP/events-$seed.jsonl" --tick-ms 60000 --views-out "$TMP/views-$seed.json" -q "${@:2}" >"$TMP/run-$seed.txt" \
        || die "tidemark run failed"
}
