# Sourced by scripts/test: makes sure Debian's libfaketime is there for the clock-skew test
# (tests/api/partition.rs), which preloads it into one worker process to set its wall clock
# ten minutes ahead. Installed with apt-get when missing (`apt_install`, chromium-env.sh).

. "$(dirname "${BASH_SOURCE[0]}")/chromium-env.sh"

ensure_faketime() {
    if ls /usr/lib/*-linux-gnu/faketime/libfaketime.so.1 >/dev/null 2>&1; then
        return 0
    fi
    printf "faketime-env: installing Debian's libfaketime\n" >&2
    apt_install libfaketime
}
