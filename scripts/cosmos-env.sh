# Sourced by scripts/test: makes sure a Cosmos DB emulator is reachable for the Cosmos DB sink
# tests and exports ETLQ_TEST_COSMOS (its HTTPS endpoint), ETLQ_TEST_COSMOS_ADMIN (the shim's
# fault-injection endpoint) and ETLQ_TEST_COSMOS_NODE_PATH (where the server package is, so a
# test that injects faults can start a private emulator). Order: both variables as given; else @vercel/cosmosdb-server
# from npm (installed once into $ETLQ_CACHE, default ~/.cache/etlq) behind our shim
# (scripts/cosmos-emulator/shim.cjs, ADR 0013), started on free loopback ports, in
# memory, and stopped by stop_cosmos.

COSMOS_SERVER_VERSION=${COSMOS_SERVER_VERSION:-1.0.1}

. "$(dirname "${BASH_SOURCE[0]}")/listen-wait.sh"

_cosmos_log() { printf 'cosmos-env: %s\n' "$*" >&2; }

ensure_cosmos() {
    if [ -n "${ETLQ_TEST_COSMOS:-}" ] && [ -n "${ETLQ_TEST_COSMOS_ADMIN:-}" ] &&
        [ -n "${ETLQ_TEST_COSMOS_NODE_PATH:-}" ]; then
        return 0
    fi
    command -v node >/dev/null 2>&1 || { _cosmos_log "node not found: install Node.js 20+"; return 1; }
    local cache=${ETLQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etlq}
    local dir="$cache/cosmosdb-server-$COSMOS_SERVER_VERSION"
    if [ ! -d "$dir/node_modules/@vercel/cosmosdb-server" ]; then
        command -v npm >/dev/null 2>&1 || { _cosmos_log "npm not found: install Node.js 20+"; return 1; }
        _cosmos_log "installing @vercel/cosmosdb-server@$COSMOS_SERVER_VERSION from npm"
        npm install --silent --no-audit --no-fund --prefix "$dir" \
            "@vercel/cosmosdb-server@$COSMOS_SERVER_VERSION" >&2 ||
            { _cosmos_log "npm could not install @vercel/cosmosdb-server@$COSMOS_SERVER_VERSION"; return 1; }
    fi
    local port admin
    for port in $(seq 18100 2 18198); do
        port_open "$port" || port_open $((port + 1)) || break
    done
    admin=$((port + 1))
    local shim="$PWD/scripts/cosmos-emulator/shim.cjs"
    _COSMOS_DIR=$(mktemp -d -t etlq-cosmos.XXXXXX)
    (cd "$_COSMOS_DIR" && NODE_PATH="$dir/node_modules" exec node "$shim" --port "$port" \
        --admin-port "$admin" >"$_COSMOS_DIR/emulator.log" 2>&1) &
    _COSMOS_PID=$!
    disown "$_COSMOS_PID" 2>/dev/null || true
    wait_listening "cosmos-env: the emulator" "$_COSMOS_PID" "$_COSMOS_DIR/emulator.log" \
        "${COSMOS_START_TIMEOUT:-60}" "$port" "$admin" || { stop_cosmos; return 1; }
    export ETLQ_TEST_COSMOS="https://127.0.0.1:$port/"
    export ETLQ_TEST_COSMOS_ADMIN="http://127.0.0.1:$admin"
    export ETLQ_TEST_COSMOS_NODE_PATH="$dir/node_modules"
    _cosmos_log "started the Cosmos DB emulator on 127.0.0.1:$port (admin $admin, pid $_COSMOS_PID)"
}

stop_cosmos() {
    [ -n "${_COSMOS_PID:-}" ] && kill -9 "$_COSMOS_PID" 2>/dev/null || true
    [ -n "${_COSMOS_DIR:-}" ] && rm -rf "$_COSMOS_DIR" || true
    _COSMOS_PID="" _COSMOS_DIR=""
}
