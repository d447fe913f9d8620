#!/usr/bin/env bash
# The one place CodeLupe's Debian packages come from. Installs those of a list that the
# machine lacks; the header audit (tests/audit/) fails CI when the build includes a
# header from a package that no list here names (or pulls in), so a package installed
# by hand can never hide a missing line here.
#
#   setup/deps.sh run            what building and running `codelupe run` needs
#   setup/deps.sh test           that, plus what the test suite uses
#   setup/deps.sh --list WHICH   print a list's package names, one a line
#
# Both installs end by fetching go-enry's classifier tables (setup/enry.sh), which the
# build compiles in.
set -euo pipefail

# Building and running. Every C dependency is vendored or built from source by its
# crate (librdkafka without libcurl, OpenSSL, libgit2, zstd, tree-sitter grammars).
RUN_PACKAGES=(
  build-essential   # gcc, g++, make: the C/C++ parts of the crates, torch-sys' wrapper
  perl              # configures the vendored OpenSSL
  pkg-config        # crates probing for system libraries
  zlib1g-dev        # libz-sys links the system zlib when its headers are present
  python3-venv      # the torch venv (setup/torch.sh)
)
# The test suite: an operator's Kafka client, Prometheus and promtool, git daemon, the
# Kafka broker's JVM and Maven, Compose v1 to validate docker-compose.yml (there is no
# Docker engine), headless Chromium for the live page.
TEST_PACKAGES=(
  git
  kcat
  prometheus
  openjdk-17-jre-headless
  maven
  docker-compose
  curl              # tests/s3/server.sh signs its requests to the test S3 server
  chromium
)

list() {
  case "${1:-}" in
    run) printf '%s\n' "${RUN_PACKAGES[@]}" ;;
    test) printf '%s\n' "${RUN_PACKAGES[@]}" "${TEST_PACKAGES[@]}" ;;
    *) echo "usage: setup/deps.sh run|test|--list run|test" >&2; exit 2 ;;
  esac
}

if [ "${1:-}" = "--list" ]; then
  list "${2:-}"
  exit 0
fi

need=()
for package in $(list "${1:-}"); do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
    || need+=("$package")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
# Not a Debian package, but every build needs it: the language classifier's tables.
bash "$(dirname "${BASH_SOURCE[0]}")/enry.sh"
