# Sourced by scripts/run and scripts/test: makes sure a PostgreSQL server is reachable and
# exports DATABASE_URL. Order: $DATABASE_URL as given; else 127.0.0.1:5432 (user postgres);
# else a private cluster in $ETLQ_PG_DIR (default /tmp/etlq-pg-$UID) started from the installed
# PostgreSQL binaries (installing Debian's package first when there are none).

_pg_log() { printf 'pg-env: %s\n' "$*" >&2; }

# Is host:port accepting TCP connections?
_pg_port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

_pg_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
    return 1
}

_pg_as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_pg_private_cluster() {
    local port=${ETLQ_PG_PORT:-55432}
    local dir=${ETLQ_PG_DIR:-/tmp/etlq-pg-$(id -u)}
    local bin
    if ! bin=$(_pg_bindir); then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            _pg_log "no PostgreSQL binaries found; installing Debian's postgresql package"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
            bin=$(_pg_bindir) || { _pg_log "installing PostgreSQL failed"; return 1; }
        else
            _pg_log "no PostgreSQL server reachable and no PostgreSQL binaries installed;"
            _pg_log "install PostgreSQL (e.g. apt-get install postgresql) or set DATABASE_URL"
            return 1
        fi
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home postgres
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        _pg_log "creating a private cluster in $dir (port $port)"
        mkdir -p "$dir/data" "$dir/run"
        [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
        _pg_as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
        {
            echo "listen_addresses = '127.0.0.1'"
            echo "port = $port"
            echo "unix_socket_directories = '$dir/run'"
            echo "max_connections = 200"
            echo "shared_buffers = 256MB"
        } >>"$dir/data/postgresql.conf"
    fi
    if ! _pg_port_open 127.0.0.1 "$port"; then
        _pg_log "starting the private cluster on 127.0.0.1:$port"
        _pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w start >/dev/null
    fi
    export ETLQ_PG_SERVER="postgres://postgres@127.0.0.1:$port"
}

# ensure_postgres DBNAME: exports DATABASE_URL (…/DBNAME) unless it is already set.
ensure_postgres() {
    local db=${1:-postgres}
    if [ -n "${DATABASE_URL:-}" ]; then
        _pg_log "using DATABASE_URL"
        return 0
    fi
    if _pg_port_open 127.0.0.1 5432; then
        export ETLQ_PG_SERVER="postgres://postgres@127.0.0.1:5432"
    else
        _pg_private_cluster || return 1
    fi
    export DATABASE_URL="$ETLQ_PG_SERVER/$db"
    _pg_log "using $DATABASE_URL"
}
