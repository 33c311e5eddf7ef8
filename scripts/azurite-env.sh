# Sourced by scripts/test: makes sure an Azurite blob endpoint is reachable for the Azure
# tests and exports ETLQ_TEST_AZURITE (the blob endpoint URL). Order: $ETLQ_TEST_AZURITE as
# given; else an Azurite already on 127.0.0.1:10000; else Azurite from npm (installed once into
# $ETLQ_CACHE, default ~/.cache/etlq) started on a free loopback port, in memory, telemetry off,
# with its workspace, log and temporary files in one directory that stop_azurite removes.

AZURITE_VERSION=${AZURITE_VERSION:-3.37.0}

. "$(dirname "${BASH_SOURCE[0]}")/listen-wait.sh"

_az_log() { printf 'azurite-env: %s\n' "$*" >&2; }

ensure_azurite() {
    if [ -n "${ETLQ_TEST_AZURITE:-}" ]; then
        return 0
    fi
    if port_open 10000; then
        export ETLQ_TEST_AZURITE=http://127.0.0.1:10000/devstoreaccount1
        _az_log "using the Azurite already on 127.0.0.1:10000"
        return 0
    fi
    local cache=${ETLQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etlq}
    local bin="$cache/azurite-$AZURITE_VERSION/node_modules/.bin/azurite-blob"
    if [ ! -x "$bin" ]; then
        command -v npm >/dev/null 2>&1 || { _az_log "npm not found: install Node.js 20+"; return 1; }
        _az_log "installing azurite@$AZURITE_VERSION from npm"
        npm install --silent --no-audit --no-fund --prefix "$cache/azurite-$AZURITE_VERSION" \
            "azurite@$AZURITE_VERSION" >&2 ||
            { _az_log "npm could not install azurite@$AZURITE_VERSION"; return 1; }
    fi
    # Waits up to $AZURITE_START_TIMEOUT seconds (listen-wait.sh says why so long), then tries
    # once more on another port.
    local attempt
    _AZURITE_PORT=""
    for attempt in 1 2; do
        _az_start "$bin" "$_AZURITE_PORT" && break
        [ "$attempt" = 2 ] && return 1
        _az_log "trying once more on another port"
    done
    export ETLQ_TEST_AZURITE=http://127.0.0.1:$_AZURITE_PORT/devstoreaccount1
    _az_log "started Azurite $AZURITE_VERSION on 127.0.0.1:$_AZURITE_PORT (pid $_AZURITE_PID)"
}

# Starts Azurite on the first free port above the one given (10100 if none) and waits for it
# to answer; on failure prints its log and leaves nothing running.
_az_start() {
    local bin=$1 after=${2:-10099} port
    for port in $(seq $((after + 1)) 10199); do port_open "$port" || break; done
    _AZURITE_PORT=$port
    _AZURITE_DIR=$(mktemp -d -t etlq-azurite.XXXXXX)
    # Its working directory and TMPDIR are the run directory: whatever it writes goes there.
    (cd "$_AZURITE_DIR" && TMPDIR="$_AZURITE_DIR" exec "$bin" --blobHost 127.0.0.1 \
        --blobPort "$port" --inMemoryPersistence --skipApiVersionCheck --disableTelemetry \
        --silent >"$_AZURITE_DIR/azurite.log" 2>&1) &
    _AZURITE_PID=$!
    disown "$_AZURITE_PID" 2>/dev/null || true # no "Killed" notice when stop_azurite ends it
    wait_listening "azurite-env: Azurite" "$_AZURITE_PID" "$_AZURITE_DIR/azurite.log" \
        "${AZURITE_START_TIMEOUT:-60}" "$port" || { stop_azurite; return 1; }
}

stop_azurite() {
    # Azurite can take ~20 s to exit on SIGTERM; in-memory persistence makes SIGKILL safe.
    [ -n "${_AZURITE_PID:-}" ] && kill -9 "$_AZURITE_PID" 2>/dev/null || true
    [ -n "${_AZURITE_DIR:-}" ] && rm -rf "$_AZURITE_DIR" || true
    _AZURITE_PID="" _AZURITE_DIR=""
}
