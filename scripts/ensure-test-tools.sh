#!/usr/bin/env bash
# What `make test` needs beyond Python packages, installed from Debian's packages when
# missing: a PostgreSQL server (the tests start their own on 127.0.0.1 in a temporary
# directory), docker-compose (to validate docker-compose.yml; no Docker engine needed) and
# Chromium (a headless browser loads the Optuna dashboard). With arguments, only those of
# the three (`make bench` needs only postgresql).
set -euo pipefail
wanted=("${@:-postgresql docker-compose chromium}")
wanted=(${wanted[*]})
want() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

have_postgres() {
  command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

missing=()
want postgresql && { have_postgres || missing+=(postgresql); }
want docker-compose && { command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose); }
want chromium && { command -v chromium >/dev/null 2>&1 || missing+=(chromium); }
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing from Debian's packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "need root (or sudo) to install ${missing[*]}; install them and run again" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's package starts a cluster of its own; the tests do not use it.
if command -v pg_lsclusters >/dev/null 2>&1; then
  $SUDO pg_ctlcluster --force "$(pg_lsclusters -h | awk 'NR==1{print $1}')" main stop >/dev/null 2>&1 || true
fi
