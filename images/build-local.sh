#!/usr/bin/env bash
# Build the bcoder images with no container registry, then run them.
#
#   images/build-local.sh [--no-run] [--base-only] [--tag TAG]
#
# 1. base:      a minimal Debian bookworm root (python3.11 + venv) made with debootstrap and
#               `docker import`ed as bcoder-base:bookworm. The rootfs tarball is cached, so a second
#               run only re-imports it (seconds).
# 2. wheels:    every pinned Python dependency is downloaded on the host (`pip download`, which
#               uses this machine's pip configuration and local wheel index) into a cached wheel
#               house, plus the CPU torch wheel from /opt/wheels; the images install from it with
#               no index (served on loopback while `docker build --network=host` runs).
# 3. images:    images/trainer/Dockerfile -> bcoder-trainer:$TAG (CPU torch build argument),
#               images/evaluator/Dockerfile -> bcoder-evaluator:$TAG.
# 4. run:       tests/cluster/test_images.py: the evaluator image under gVisor (docker --runtime=runsc
#               --network=none) on a small execute shard; the trainer image running the phi Job's
#               torchrun command line on a tiny CPU model. --no-run skips this (CI runs pytest).
#
# Idempotent: re-running rebuilds only what changed (docker layer cache, cached base tarball).
# Starts dockerd (with the runsc runtime configured) when no daemon answers and we are root.
# Environment: BCODER_IMAGE_CACHE (default ~/.cache/bcoder-images), TORCH_WHEEL (CPU wheel path),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${BCODER_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bcoder-images}"
TORCH_WHEEL="${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_TAG="bcoder-base:bookworm"
TAG="local"
RUN=1
BASE_ONLY=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-run) RUN=0 ;;
    --base-only) BASE_ONLY=1 ;;
    --tag) TAG="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | cut -c3-; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

WHEEL_SERVER=""
trap 'if [[ -n "$WHEEL_SERVER" ]]; then kill "$WHEEL_SERVER" 2>/dev/null || true; fi' EXIT

log() { printf '[build-local %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
START=$SECONDS
mkdir -p "$CACHE"

# --- docker daemon ---------------------------------------------------------------------------
ensure_daemon() {
  if docker info >/dev/null 2>&1; then
    return
  fi
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: no docker daemon answers and we are not root to start one" >&2
    exit 1
  fi
  if ! command -v dockerd >/dev/null; then
    log "installing docker.io (dockerd)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  fi
  # Register gVisor as a runtime; keep any other settings an existing daemon.json has.
  mkdir -p /etc/docker
  python3 - <<'EOF'
import json, pathlib
p = pathlib.Path("/etc/docker/daemon.json")
cfg = json.loads(p.read_text()) if p.exists() and p.read_text().strip() else {}
# --network=none: gVisor refuses to set up its netstack here, and the evaluator needs none.
cfg.setdefault("runtimes", {})["runsc"] = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}
p.write_text(json.dumps(cfg, indent=2) + "\n")
EOF
  log "starting dockerd (log: $CACHE/dockerd.log)"
  nohup dockerd >"$CACHE/dockerd.log" 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return
    sleep 1
  done
  echo "error: dockerd did not come up; see $CACHE/dockerd.log" >&2
  exit 1
}

# --- 1. base ---------------------------------------------------------------------------------
build_base() {
  local tarball="$CACHE/bookworm-python3.11-rootfs.tar"
  if [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null || {
      log "installing debootstrap"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    local root stale
    # Left-overs of an interrupted run: debootstrap may have left /proc or /sys mounted inside.
    for stale in "$CACHE"/rootfs.*; do
      [[ -d "$stale" ]] || continue
      umount -R "$stale/proc" "$stale/sys" 2>/dev/null || true
      rm -rf "$stale"
    done
    root="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    log "debootstrap bookworm -> $root"
    # minbase + the interpreter, venv/ensurepip and CA certificates; nothing else.
    debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$root" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
      tail -20 "$CACHE/debootstrap.log" >&2
      umount -R "$root/proc" "$root/sys" 2>/dev/null || true
      rm -rf "$root"
      exit 1
    }
    # Drop what only the build needed: apt lists, caches, docs and man pages.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  local sum
  sum="$(sha256sum "$tarball" | cut -c1-16)"
  if [[ "$(docker image inspect -f '{{index .Config.Labels "bcoder.rootfs"}}' "$BASE_TAG" 2>/dev/null)" != "$sum" ]]; then
    log "docker import $BASE_TAG"
    docker import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      -c "LABEL bcoder.rootfs=$sum" \
      -c 'CMD ["/bin/bash"]' \
      "$tarball" "$BASE_TAG" >/dev/null
  fi
}

# --- 2. staged build context and wheel house ------------------------------------------------
# The context holds only what the Dockerfiles COPY (tracked and untracked-but-not-ignored files),
# so runs/, caches and .git never reach the daemon.
stage_context() {
  local ctx="$CACHE/context"
  rm -rf "$ctx.new" && mkdir -p "$ctx.new"
  (cd "$REPO" && git ls-files -co --exclude-standard -- pyproject.toml README.md bcoder_core jobs configs images) \
    | while read -r f; do if [[ -f "$REPO/$f" ]]; then printf '%s\n' "$f"; fi; done \
    | tar -C "$REPO" -cf - -T - | tar -C "$ctx.new" -xf -
  [[ -f "$ctx.new/README.md" ]] || echo "bcoder" >"$ctx.new/README.md"
  rm -rf "$ctx" && mv "$ctx.new" "$ctx"

  local wheels="$CACHE/wheels" stamp
  mkdir -p "$wheels"
  stamp="$(cat "$REPO/images/evaluator/requirements.txt" "$REPO/images/trainer/requirements.txt" | sha256sum | cut -c1-16)"
  if [[ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$stamp" ]]; then
    log "pip download (pinned evaluator + trainer requirements) -> $wheels"
    python3 -m pip download --quiet --only-binary=:all: --no-deps -d "$wheels" \
      -r "$REPO/images/evaluator/requirements.txt" -r "$REPO/images/trainer/requirements.txt" \
      2> >(grep -v "is ignored: it is neither" >&2)
    echo "$stamp" >"$wheels/.stamp"
  fi
  [[ -f "$wheels/$(basename "$TORCH_WHEEL")" ]] || cp "$TORCH_WHEEL" "$wheels/"
}

# The images install from the wheel house over HTTP on loopback (docker build --network=host):
# nothing is copied into a layer, and pip sees no index at all.
build_images() {
  # A fixed port keeps the PIP_FIND_LINKS build argument, and so docker's layer cache, stable
  # across runs; a random free one only when it is taken.
  local port="${BCODER_WHEEL_PORT:-38417}"
  if ! python3 -c "import socket; socket.socket().bind(('127.0.0.1', $port))" 2>/dev/null; then
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  fi
  python3 -m http.server --bind 127.0.0.1 --directory "$CACHE/wheels" "$port" >/dev/null 2>&1 &
  WHEEL_SERVER=$!
  for _ in $(seq 50); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
    sleep 0.1
  done
  local pip_args=(--build-arg BASE_IMAGE="$BASE_TAG" --build-arg PIP_NO_INDEX=1
    --build-arg PIP_FIND_LINKS="http://127.0.0.1:$port/")
  log "docker build bcoder-evaluator:$TAG"
  docker build --quiet --network=host -f "$CACHE/context/images/evaluator/Dockerfile" "${pip_args[@]}" \
    -t "bcoder-evaluator:$TAG" "$CACHE/context" >/dev/null
  log "docker build bcoder-trainer:$TAG"
  docker build --quiet --network=host -f "$CACHE/context/images/trainer/Dockerfile" "${pip_args[@]}" \
    --build-arg TORCH_REQUIREMENT="torch==2.13.0+cpu" \
    -t "bcoder-trainer:$TAG" "$CACHE/context" >/dev/null
  kill "$WHEEL_SERVER" 2>/dev/null || true
  WHEEL_SERVER=""
}

ensure_daemon
build_base
log "base ready ($((SECONDS - START)) s)"
[[ $BASE_ONLY -eq 1 ]] && exit 0
stage_context
build_images
log "images built ($((SECONDS - START)) s total)"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^bcoder-' >&2 || true

# 4. Run them: the image tests are the run steps (evaluator: an execute shard under gVisor;
# trainer: the phi Job's torchrun command line on a tiny model), so CI and humans run the same.
if [[ $RUN -eq 1 ]]; then
  (cd "$REPO" && BCODER_IMAGE_TAG="$TAG" python3 -m pytest -q -p no:cacheprovider tests/cluster/test_images.py)
  log "images ran ($((SECONDS - START)) s total)"
fi
