# Sourced by scripts/test: makes sure a headless Chromium and its ChromeDriver are there for
# the console tests (tests/api/console.rs) and exports ETLQ_CHROMIUM and ETLQ_CHROMEDRIVER.
# Order: the variables as given; else Debian's /usr/bin/chromium and /usr/bin/chromedriver;
# else Debian's `chromium` and `chromium-driver` packages installed with apt-get (as root, or
# with sudo when it asks for no password).

_cr_log() { printf 'chromium-env: %s\n' "$*" >&2; }

# Installs Debian packages: as root, or with sudo when it asks for no password; else says the
# command to run and fails.
apt_install() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            printf 'apt_install: apt-get needs root: sudo apt-get install -y %s\n' "$*" >&2
            return 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y -q "$@" >&2; then
        # A fresh machine's package lists may be stale or empty.
        $sudo apt-get update -q >&2
        $sudo apt-get install -y -q "$@" >&2
    fi
}

ensure_chromium() {
    export ETLQ_CHROMIUM=${ETLQ_CHROMIUM:-/usr/bin/chromium}
    export ETLQ_CHROMEDRIVER=${ETLQ_CHROMEDRIVER:-/usr/bin/chromedriver}
    if [ -x "$ETLQ_CHROMIUM" ] && [ -x "$ETLQ_CHROMEDRIVER" ]; then
        return 0
    fi
    _cr_log "installing Debian's chromium and chromium-driver"
    apt_install chromium chromium-driver || return 1
    [ -x "$ETLQ_CHROMIUM" ] && [ -x "$ETLQ_CHROMEDRIVER" ] || {
        _cr_log "chromium installed but $ETLQ_CHROMIUM / $ETLQ_CHROMEDRIVER not found"
        return 1
    }
}
