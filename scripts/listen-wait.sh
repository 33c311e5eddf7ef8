# Sourced by the *-env.sh scripts that start a local server (Azurite, the Cosmos DB emulator):
# whether a loopback port answers, and the wait for a just-started server to listen.

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

_all_ports_open() {
    local p
    for p in "$@"; do port_open "$p" || return 1; done
}

# wait_listening NAME PID LOG TIMEOUT_S PORT... — returns 0 once every PORT answers. Returns 1,
# after printing LOG and why, if process PID exits first or TIMEOUT_S seconds pass; stopping
# the process is the caller's. A loaded machine can keep Node from listening for many seconds
# (one CI run saw nothing on Azurite's port after 20 s, where it usually answers in 0.6 s), so
# callers give it a minute.
wait_listening() {
    local name=$1 pid=$2 log=$3 timeout=$4
    shift 4
    local deadline=$((SECONDS + timeout))
    until _all_ports_open "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$log" >&2
            printf '%s exited\n' "$name" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            cat "$log" >&2
            printf '%s did not answer on port %s within %s s\n' "$name" "$*" "$timeout" >&2
            return 1
        fi
        sleep 0.1
    done
}
