#!/usr/bin/env bash
# Fails when the build included a header that belongs to a Debian package which
# setup/deps.sh neither names nor pulls in (through its dependencies): that package was
# installed by hand on this machine, and a new machine's build would fail without it.
# Reads the records tests/audit/compiler left in $HEADER_AUDIT_DIR.
# HEADER_AUDIT_PACKAGES overrides the named packages (the audit's own test uses it).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${HEADER_AUDIT_DIR:?source tests/audit/enable.sh before the build}
shopt -s nullglob
records=("$dir"/*.d)
if [ ${#records[@]} -eq 0 ]; then
  echo "header audit: no compilation recorded in $dir; build with tests/audit/enable.sh sourced (from an empty target folder the first time)" >&2
  exit 1
fi

# Every absolute path a record names, once. (Through xargs: the records of every build
# the target folder has seen can outgrow one command line.)
headers=$(printf '%s\0' "${records[@]}" | xargs -0 cat | tr ' \\' '\n\n' | grep '^/' | grep -v ':$' | sort -u)
# The Debian package of each (paths no package owns are the build's own).
owners=$(printf '%s\n' "$headers" | { xargs -r dpkg -S 2>/dev/null || true; } \
  | grep -v '^diversion' | sed 's/: \/.*//' | tr ',' '\n' | sed 's/^ *//; s/:.*//' | sort -u)

named=${HEADER_AUDIT_PACKAGES:-$(bash setup/deps.sh --list test)}
# shellcheck disable=SC2086
allowed=$(apt-cache depends --recurse --installed --no-recommends --no-suggests \
  --no-conflicts --no-breaks --no-replaces --no-enhances $named 2>/dev/null \
  | grep -v '^ ' | sed 's/[<>]//g; s/:.*//' | sort -u)

missing=$(comm -23 <(printf '%s\n' "$owners") <(printf '%s\n' "$allowed"))
if [ -n "$missing" ]; then
  echo "header audit: the build includes headers from packages setup/deps.sh does not install:" >&2
  for package in $missing; do
    example=$(printf '%s\n' "$headers" | while read -r h; do
      dpkg -S "$h" 2>/dev/null | grep -q "^$package[:,]" && { echo "$h"; break; }; done)
    echo "  $package (e.g. $example)" >&2
  done
  echo "add them to setup/deps.sh, or make the build need less" >&2
  exit 1
fi
echo "header audit: $(printf '%s\n' "$headers" | wc -l) headers from $(printf '%s\n' "$owners" | grep -c .) packages, all installed by setup/deps.sh ($(echo ${#records[@]}) compilations)"
