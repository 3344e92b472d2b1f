#!/usr/bin/env bash
# Installs what building, running and testing Free Agent needs, and only what
# is missing (safe to run again): the wasm32 target, cargo-leptos, the
# wasm-bindgen CLI matching the crate's pinned wasm-bindgen, Chromium, wrk,
# jq and curl from Debian (the last three for bench/), brotli from Debian
# (scripts/compress-site.sh writes the site's .br files with it), Debian's
# systemd (for systemd-analyze, which checks deploy/'s unit), Debian's postgresql
# (for its initdb and pg_ctl: the tests start a throwaway cluster of their
# own, never the system service), Debian's prometheus (for prometheus and
# promtool: a test starts its own server scraping /metrics, never the system
# service, which is kept from starting), and the npm packages of end2end/
# (Playwright without a browser download; binaryen's wasm-opt, because
# Debian's breaks hydration; axe-core, the accessibility audit).
# Needs only the Rust toolchain, cargo, npm and apt. Nothing comes from GitHub.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

LEPTOS_VERSION=0.3.11
BINDGEN_VERSION=0.2.130
# cargo-leptos' locked dependencies need a newer rustc than some machines have.
INSTALL_TOOLCHAIN=1.96.0

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

apt_install() {
  log "apt-get install $*"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# Installs packages whose postinst would start a system service (Debian's
# prometheus does, through its init script where systemd is absent): a
# policy-rc.d answering 101 denies every start while they install, as in
# Docker images. One already in place is left as it is.
apt_install_without_services() {
  local policy=/usr/sbin/policy-rc.d status=0
  if [ -e "$policy" ]; then
    apt_install "$@"
    return
  fi
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  apt_install "$@" || status=$?
  $SUDO rm -f "$policy"
  return "$status"
}

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v wrk >/dev/null || missing+=(wrk)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
command -v brotli >/dev/null || missing+=(brotli)
# systemd-analyze: the tests verify deploy/freeagent.service with it.
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v npm >/dev/null || missing+=(nodejs npm)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
# The tests' own Prometheus; its node-exporter recommendation is not needed.
command -v prometheus >/dev/null || apt_install_without_services --no-install-recommends prometheus

rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
  || { log "adding the wasm32 target"; rustup target add wasm32-unknown-unknown; }

ensure_install_toolchain() {
  rustup toolchain list | grep -q "^$INSTALL_TOOLCHAIN" \
    || rustup toolchain install "$INSTALL_TOOLCHAIN" --profile minimal
}

if ! cargo-leptos --version 2>/dev/null | grep -q "$LEPTOS_VERSION"; then
  log "installing cargo-leptos $LEPTOS_VERSION (about 20 minutes, once)"
  ensure_install_toolchain
  cargo "+$INSTALL_TOOLCHAIN" install cargo-leptos --version "$LEPTOS_VERSION" --locked --features no_downloads
fi

if ! wasm-bindgen --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; then
  log "installing wasm-bindgen-cli $BINDGEN_VERSION"
  ensure_install_toolchain
  # Its lock file names a webpki-roots release that was yanked: unpack the
  # crate and pin the release before it.
  cargo "+$INSTALL_TOOLCHAIN" install wasm-bindgen-cli --version "$BINDGEN_VERSION" --locked >/dev/null 2>&1 || true
  if ! wasm-bindgen --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; then
    crate=$(ls "$HOME"/.cargo/registry/cache/*/wasm-bindgen-cli-"$BINDGEN_VERSION".crate | head -n1)
    src=$(mktemp -d)
    tar xzf "$crate" -C "$src"
    (cd "$src/wasm-bindgen-cli-$BINDGEN_VERSION" \
      && cargo "+$INSTALL_TOOLCHAIN" update -p webpki-roots --precise 1.0.10 \
      && cargo "+$INSTALL_TOOLCHAIN" install --path . --locked)
    rm -rf "$src"
  fi
fi

# axe-core has no binary: its script is what the browser tests inject.
if [ ! -x end2end/node_modules/.bin/playwright ] || [ ! -x end2end/node_modules/.bin/wasm-opt ] \
  || [ ! -f end2end/node_modules/axe-core/axe.min.js ]; then
  log "installing end2end npm packages"
  (cd end2end && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
log "ready"
