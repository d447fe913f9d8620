#!/usr/bin/env bash
# Installs what the tests need that a fresh machine lacks (Debian packages): kcat to
# talk to Kafka like an operator, promtool to check metrics, cmake and git for the
# build, python3-venv for the torch venv (tests/torch.sh). Java 17 and Maven (for the test broker) are on the machine already.
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v git >/dev/null || need+=(git)
command -v kcat >/dev/null || need+=(kcat)
command -v promtool >/dev/null || need+=(prometheus)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v perl >/dev/null || need+=(perl)   # builds the vendored OpenSSL
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
# the torch venv (tests/torch.sh)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
# validates docker-compose.yml (no Docker engine here; Compose v1 reads the same file)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)

if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
