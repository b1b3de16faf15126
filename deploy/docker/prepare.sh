#!/usr/bin/env bash
# Prepares a Debian 12 machine (as root; no systemd needed) for real runs of the project's
# Dockerfile and docker-compose.yml where Docker Hub is unreachable. Idempotent; each step is
# skipped when its result is already there:
#
#   1. installs what is missing, from Debian's packages: docker.io (dockerd, containerd, runc,
#      and a 20.10 CLI with BuildKit built in), docker-compose (1.29), debootstrap;
#   2. starts dockerd in the background when no engine answers (log: $DOCKERD_LOG, default
#      /var/log/dockerd.log) and waits until `docker info` answers;
#   3. makes, locally, the base images the Dockerfile and docker-compose.yml name, under their
#      upstream names so both build and run unchanged:
#        debian:<release>-slim   debootstrap --variant=minbase from the Debian mirror apt uses
#        rust:<ver>-slim-<rel>   this machine's Rust toolchain (which must be <ver>) + gcc
#        redis, haproxy, prom/prometheus   stand-ins made from Debian's packages (base/*.Dockerfile)
#      Grafana has no Debian package: its image is not made (the real run leaves it out).
#
# The machine's CA bundle is copied into the images built here that fetch over HTTPS (rust:
# crates.io during the gateway build; the stand-ins: apt), at build time only: it is never part
# of the repository. Every image made here carries the label
# org.opencontainers.image.description saying it is a local stand-in.
#
#   bash deploy/docker/prepare.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/deploy/docker"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

log() { printf '[prepare-docker] %s\n' "$*"; }
die() { printf '[prepare-docker] error: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
# apt-get install with one `apt-get update` per run; a temporary policy-rc.d keeps the
# packages' init scripts from starting dockerd (step 2 starts it, with its log in a file).
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  local policy=/usr/sbin/policy-rc.d added=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    added=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" || rc=$?
  if [ "$added" = 1 ]; then rm -f "$policy"; fi
  return "$rc"
}

# Installs PACKAGE when COMMAND is missing.
need() {
  local cmd="$1" pkg="$2"
  if command -v "$cmd" >/dev/null; then
    log "$cmd present"
  else
    log "apt-get install $pkg"
    apt_install "$pkg"
  fi
}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

# Starts dockerd unless an engine answers already; waits up to 60 s for it.
start_engine() {
  if engine_answers; then
    log "Docker engine answers ($(docker info --format '{{.ServerVersion}}'))"
    return
  fi
  if pgrep -x dockerd >/dev/null; then
    log "dockerd runs but does not answer yet; waiting"
  else
    log "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # its own session, no terminal, no inherited pipes, `/` as its directory: it outlives
    # this script and the process that called it (a test reading our output must not wait
    # for dockerd to exit, nor a checkout be pinned by it)
    (cd / && setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &)
  fi
  local i
  for i in $(seq 1 120); do
    if engine_answers; then
      log "Docker engine answers after ${i} tries ($(docker info --format '{{.ServerVersion}}'))"
      return
    fi
    sleep 0.5
  done
  tail -n 30 "$DOCKERD_LOG" >&2 || true
  die "dockerd did not answer within 60 s (log above, from $DOCKERD_LOG)"
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# `ARG NAME=value` of the project's Dockerfile.
dockerfile_arg() {
  sed -n "s/^ARG $1=//p" "$ROOT/Dockerfile" | head -n1
}

# The `image:` of a docker-compose.yml service whose image name starts with PREFIX.
compose_image() {
  sed -n 's/^ *image: *//p' "$ROOT/docker-compose.yml" | grep -m1 "^$1" || true
}

# The archive apt installs Debian from (deb822 or one-line sources alike), as apt sees it.
debian_mirror() {
  # $(...) here are apt's field names, not shell expansions
  # shellcheck disable=SC2016
  apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
    awk '$2 !~ /-(security|updates|backports|proposed-updates)$/ { print $1; exit }'
}

# Scratch space (debootstrap's tree, build contexts, logs), removed when the script exits.
SCRATCH=""
make_scratch_root() {
  SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/prepare-docker.XXXXXX")"
  trap 'rm -rf "$SCRATCH"' EXIT
}

# A new directory in the scratch space.
scratch() { mktemp -d "$SCRATCH/XXXXXX"; }

# Every image made here says what it is, in this label.
LABEL_KEY=org.opencontainers.image.description
stand_in_text() {
  printf 'local stand-in for %s, made by deploy/docker/prepare.sh from %s' "$1" "$2"
}

# debian:<release>-slim: a minbase debootstrap, trimmed like the upstream slim image.
make_debian() {
  local tag="$1" release="$2"
  if have_image "$tag"; then
    log "$tag present"
    return
  fi
  need debootstrap debootstrap
  local mirror
  mirror="$(debian_mirror)"
  [ -n "$mirror" ] || die "no Debian archive found in apt's sources (apt-get indextargets)"
  local dir
  dir="$(scratch)/rootfs"
  log "debootstrap --variant=minbase $release from $mirror"
  debootstrap --variant=minbase "$release" "$dir" "$mirror" >"$SCRATCH/debootstrap.log" 2>&1 ||
    { tail -n 20 "$SCRATCH/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
    "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/locale/*
  # like the upstream image: apt keeps no downloaded packages in layers
  printf 'APT::Keep-Downloaded-Packages "false";\n' >"$dir/etc/apt/apt.conf.d/docker-clean"
  tar -C "$dir" -c . | docker import \
    --change 'CMD ["bash"]' \
    --change "LABEL $LABEL_KEY=\"$(stand_in_text "$tag" "debootstrap of $mirror")\"" \
    - "$tag" >/dev/null
  rm -rf "$dir"
  log "$tag made"
}

# Builds TAG from base/NAME.Dockerfile on top of the local Debian image, in the context
# directory CTX (removed afterwards), with the machine's CA bundle added to it (apt over HTTPS
# mirrors; cargo in the rust image).
build_in() {
  local tag="$1" name="$2" debian="$3" what="$4" ctx="$5"
  [ -r "$CA_BUNDLE" ] || die "no CA bundle at $CA_BUNDLE (set CA_BUNDLE)"
  cp "$HERE/base/$name.Dockerfile" "$ctx/Dockerfile"
  cp "$CA_BUNDLE" "$ctx/ca-certificates.crt"
  log "building $tag ($what)"
  # the classic builder: it works with any docker CLI (and the output is kept for failures)
  DOCKER_BUILDKIT=0 docker build --build-arg "BASE=$debian" \
    --label "$LABEL_KEY=$(stand_in_text "$tag" "$what")" -t "$tag" "$ctx" >"$SCRATCH/build.log" 2>&1 ||
    { tail -n 30 "$SCRATCH/build.log" >&2; die "building $tag failed"; }
  rm -rf "$ctx"
  log "$tag made"
}

# A stand-in made from Debian packages: base/NAME.Dockerfile, plus the files named after it.
make_stand_in() {
  local tag="$1" name="$2" debian="$3" what="$4"
  shift 4
  if [ -z "$tag" ]; then return; fi
  if have_image "$tag"; then
    log "$tag present"
    return
  fi
  local ctx extra
  ctx="$(scratch)"
  for extra in "$@"; do cp "$HERE/base/$extra" "$ctx/"; done
  build_in "$tag" "$name" "$debian" "$what" "$ctx"
}

# rust:<version>-slim-<release>: this machine's toolchain (rustc, cargo, the std library; no
# docs or sources), which must be the version the Dockerfile asks for.
make_rust() {
  local tag="$1" want="$2" debian="$3"
  if have_image "$tag"; then
    log "$tag present"
    return
  fi
  command -v rustc >/dev/null || die "no rustc on this machine to make $tag from"
  local have
  have="$(rustc --version | awk '{print $2}')"
  case "$have" in
    "$want" | "$want".*) ;;
    *) die "the Dockerfile wants Rust $want; this machine's rustc is $have (change ARG RUST_VERSION or the toolchain)" ;;
  esac
  local sysroot ctx part
  sysroot="$(rustc --print sysroot)"
  ctx="$(scratch)"
  mkdir "$ctx/rust"
  for part in bin lib libexec; do
    if [ -d "$sysroot/$part" ]; then cp -a "$sysroot/$part" "$ctx/rust/"; fi
  done
  # sources the build never reads
  rm -rf "$ctx/rust/lib/rustlib/src" "$ctx/rust/lib/rustlib/rustc-src"
  build_in "$tag" rust "$debian" "rustc $have of the machine that ran it" "$ctx"
}

main() {
  need dockerd docker.io
  need docker-compose docker-compose
  start_engine
  make_scratch_root

  local release rust_version debian
  release="$(dockerfile_arg DEBIAN_RELEASE)"
  rust_version="$(dockerfile_arg RUST_VERSION)"
  [ -n "$release" ] && [ -n "$rust_version" ] || die "Dockerfile lacks ARG DEBIAN_RELEASE / ARG RUST_VERSION"
  debian="debian:$release-slim"
  make_debian "$debian" "$release"
  make_rust "rust:$rust_version-slim-$release" "$rust_version" "$debian"

  make_stand_in "$(compose_image redis:)" redis "$debian" "Debian's redis-server" redis-entrypoint.sh
  make_stand_in "$(compose_image haproxy:)" haproxy "$debian" "Debian's haproxy"
  make_stand_in "$(compose_image prom/prometheus:)" prometheus "$debian" "Debian's prometheus"
  local img
  img="$(compose_image grafana/)"
  if [ -n "$img" ] && ! have_image "$img"; then
    log "$img: not made (no Debian package); compose runs here leave grafana out"
  fi
  log "ready"
}

main
