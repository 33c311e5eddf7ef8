# Sourced by scripts/test: makes sure a Cosmos DB emulator is reachable for the Cosmos DB sink
# tests and exports ETLQ_TEST_COSMOS (its HTTPS endpoint), ETLQ_TEST_COSMOS_ADMIN (the shim's
# fault-injection endpoint) and ETLQ_TEST_COSMOS_NODE_PATH (where the server package is, so a
# test that injects faults can start a private emulator). Order: both variables as given; else @vercel/cosmosdb-server
# from npm (installed once into $ETLQ_CACHE, default ~/.cache/etlq) behind our shim
# (scripts/cosmos-emulator/shim.cjs, ADR 0013), started on free loopback ports, in
# memory, and stopped by stop_cosmos.

COSMOS_SERVER_VERSION=${COSMOS_SERVER_VERSION:-1.0.1}

_cosmos_log() { printf 'cosmos-env: %s\n' "$*" >&2; }
_cosmos_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

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
        _cosmos_port_open "$port" || _cosmos_port_open $((port + 1)) || break
    done
    admin=$((port + 1))
    local shim="$PWD/scripts/cosmos-emulator/shim.cjs"
    _COSMOS_DIR=$(mktemp -d -t etlq-cosmos.XXXXXX)
    (cd "$_COSMOS_DIR" && NODE_PATH="$dir/node_modules" exec node "$shim" --port "$port" \
        --admin-port "$admin" >"$_COSMOS_DIR/emulator.log" 2>&1) &
    _COSMOS_PID=$!
    disown "$_COSMOS_PID" 2>/dev/null || true
    # It usually answers within a second; a loaded machine can take far longer (Azurite, also
    # Node, once gave nothing for 20 s in CI), so the wait is generous and says why it ended.
    local deadline=$((SECONDS + ${COSMOS_START_TIMEOUT:-60}))
    until _cosmos_port_open "$port" && _cosmos_port_open "$admin"; do
        if ! kill -0 "$_COSMOS_PID" 2>/dev/null; then
            cat "$_COSMOS_DIR/emulator.log" >&2
            _cosmos_log "the emulator exited"
            stop_cosmos
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            cat "$_COSMOS_DIR/emulator.log" >&2
            _cosmos_log "the emulator did not answer on ports $port/$admin within ${COSMOS_START_TIMEOUT:-60} s"
            stop_cosmos
            return 1
        fi
        sleep 0.1
    done
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
