#!/usr/bin/env bash
# Install the Autobahn testsuite (wstest) into a Python 2.7 virtualenv outside the repository.
#
# Usage: conformance/install.sh [--check] [--force]
#   (no option)  install if missing or broken, otherwise do nothing; prints the wstest path last
#   --check      only report whether a working install exists (exit 0 yes, 1 no, 3 no Python 2.7)
#   --force      delete the virtualenv and install again
#
# Environment:
#   URINGWS_CACHE   cache root (default ~/.cache/uringws); the virtualenv is $URINGWS_CACHE/autobahn-py27
#   URINGWS_PY27    Python 2.7 interpreter (default: $PYENV_ROOT/versions/2.7.18/bin/python, PYENV_ROOT=~/.pyenv)
#
# Why Python 2.7: the Autobahn fuzzing client/server only runs on Python 2. Why these exact pins: they are the
# last releases that work together on 2.7 (docs/design.md §6); a newer Twisted, pyOpenSSL or cryptography no
# longer installs or imports on 2.7.
#
# Exit codes: 0 ok, 1 install failed / not installed (--check), 2 usage, 3 no Python 2.7 interpreter.
set -euo pipefail

CACHE="${URINGWS_CACHE:-$HOME/.cache/uringws}"
VENV="$CACHE/autobahn-py27"
PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"
PY27="${URINGWS_PY27:-$PYENV_ROOT/versions/2.7.18/bin/python}"
SUITE_VERSION="25.10.1"

# Upstream pins (docs/design.md §6). Changing this list changes the stamp, which forces a reinstall.
PINS=(
    setuptools==44.0.0 txaio==2.1.0 incremental==16.10.1 pyOpenSSL==19.1.0 cryptography==3.3.2
    Twisted==19.10.0 zope.interface==4.6.0 jinja2==2.11.3 markupsafe==1.1.1 Werkzeug==1.0.1
    klein==17.10.0 service_identity==18.1.0 unittest2==1.1.0 six==1.16.0
    "autobahn[twisted,accelerate]==0.10.9"
)
STAMP_TEXT="${PINS[*]} autobahntestsuite==$SUITE_VERSION"

log() { printf 'install.sh: %s\n' "$*" >&2; }

# pip on 2.7 warns about its own end of life and about this machine's local file:// indexes on every
# package; drop those lines so real errors stay visible.
export PIP_NO_PYTHON_VERSION_WARNING=1
quiet_pip() {
    "$@" 2> >(grep -v -e 'is ignored: it is neither a file nor a directory' -e 'DEPRECATION: Python 2.7' >&2)
}

check_only=0
force=0
for arg in "$@"; do
    case "$arg" in
        --check) check_only=1 ;;
        --force) force=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) log "unknown option: $arg"; exit 2 ;;
    esac
done

# True when the virtualenv exists, was made from the current pin list, and wstest imports and reports the
# expected version (a half-finished install fails the last test).
installed_ok() {
    [[ -x "$VENV/bin/wstest" && -f "$VENV/.uringws-stamp" ]] || return 1
    [[ "$(cat "$VENV/.uringws-stamp")" == "$STAMP_TEXT" ]] || return 1
    "$VENV/bin/wstest" --autobahnversion 2>/dev/null | grep -q "AutobahnTestSuite $SUITE_VERSION" || return 1
    # The TLS stack is imported lazily by wstest; check it here so a broken cryptography wheel shows up now.
    "$VENV/bin/python" -c 'import OpenSSL.SSL, twisted.internet.ssl, wsaccel, ujson' 2>/dev/null || return 1
}

if [[ $force -eq 0 ]] && installed_ok; then
    log "Autobahn testsuite $SUITE_VERSION already installed in $VENV"
    echo "$VENV/bin/wstest"
    exit 0
fi
if [[ $check_only -eq 1 ]]; then
    log "no working Autobahn testsuite install in $VENV (run conformance/install.sh)"
    exit 1
fi

if [[ ! -x "$PY27" ]] || ! "$PY27" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
    cat >&2 <<EOF
install.sh: ERROR: no Python 2.7 interpreter at $PY27
install.sh: The Autobahn testsuite (wstest) runs only on Python 2.7. This project expects the pyenv build
install.sh: ~/.pyenv/versions/2.7.18 that the machine image ships. Set URINGWS_PY27=/path/to/python2.7 to use
install.sh: another one; 'pyenv install 2.7.18' needs the CPython source download from python.org, which is
install.sh: not a package registry and may be unreachable. Debian 12 has no python2 package.
EOF
    exit 3
fi

log "using $("$PY27" -c 'import sys; print(sys.executable + " " + sys.version.split()[0])')"
mkdir -p "$CACHE"
# Run pip from a neutral directory: Python 2's "-m pip" puts the cwd on sys.path and would pick up the repo.
cd "$CACHE"

if ! "$PY27" -c 'import virtualenv' 2>/dev/null; then
    log "installing virtualenv<20.22 into the Python 2.7 interpreter (the last series that supports 2.7)"
    quiet_pip "$PY27" -m pip install --disable-pip-version-check -q 'virtualenv<20.22'
fi

rm -rf "$VENV"
log "creating virtualenv $VENV"
"$PY27" -m virtualenv -q "$VENV"
log "installing pinned dependencies (compiles wsaccel and ujson; about a minute)"
quiet_pip "$VENV/bin/pip" install --disable-pip-version-check -q "${PINS[@]}"
# --no-deps: autobahntestsuite's own metadata asks for unpinned versions that no longer support 2.7.
quiet_pip "$VENV/bin/pip" install --disable-pip-version-check -q --no-deps "autobahntestsuite==$SUITE_VERSION"
printf '%s' "$STAMP_TEXT" > "$VENV/.uringws-stamp"

if ! installed_ok; then
    log "ERROR: install finished but wstest does not work; output of wstest --autobahnversion:"
    "$VENV/bin/wstest" --autobahnversion >&2 || true
    exit 1
fi
log "installed: $("$VENV/bin/wstest" --autobahnversion | tr '\n' ' ')"
echo "$VENV/bin/wstest"
