#!/usr/bin/env bash
# One SeaweedFS server (master, volume, filer and its S3 gateway) on 127.0.0.1 for the
# tests, the S3-compatible object store the clone store runs against. Built from the Go
# module proxy (its go.mod has replace directives, so `go install` is refused: the
# module is downloaded and built in a copy) and cached outside the clone.
#
#   tests/s3/server.sh build   build the binary if the cache has none (about 7 minutes)
#   tests/s3/server.sh up      build if needed, start, wait, create the test bucket
#   tests/s3/server.sh down    stop it and delete its data
#   tests/s3/server.sh status  exit 0 when it answers
#   tests/s3/server.sh env     the AWS_* variables a client needs (eval "$(... env)")
#
# Requests must be signed with the test identity's keys (anonymous access is refused),
# so the tests exercise credentials from the environment as a cluster would.
set -euo pipefail

version=v0.0.0-20261109003541-7506e5f91cd6
cache=${LUPE_CACHE_DIR:-$HOME/.cache/codelupe}
weed="$cache/seaweedfs-$version/weed"
port=${S3_PORT:-18333}
state="${TMPDIR:-/tmp}/codelupe-s3-$port"
bucket=${S3_BUCKET:-codelupe-test}
access_key=codelupe-test
secret_key=codelupe-test-secret

build() {
  if [ -x "$weed" ]; then return; fi
  echo "s3: building SeaweedFS $version into $weed" >&2
  local module work
  module=$(go mod download -json "github.com/seaweedfs/seaweedfs@$version" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  work=$(mktemp -d)
  cp -r "$module/." "$work/"
  chmod -R u+w "$work"
  mkdir -p "$(dirname "$weed")"
  (cd "$work" && go build -o "$weed.partial" ./weed)
  mv "$weed.partial" "$weed"
  rm -rf "$work"
}

endpoint="http://127.0.0.1:$port"

answers() {
  curl -s -o /dev/null -m 2 "$endpoint/" 2>/dev/null
}

print_env() {
  cat <<VARS
export AWS_ACCESS_KEY_ID=$access_key AWS_SECRET_ACCESS_KEY=$secret_key
export AWS_ENDPOINT=$endpoint AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
export TEST_S3_BUCKET=$bucket
VARS
}

up() {
  if answers; then echo "s3: already answering on $endpoint" >&2; return; fi
  build
  rm -rf "$state"
  mkdir -p "$state/data"
  cat >"$state/s3.json" <<JSON
{"identities": [{"name": "codelupe-test",
  "credentials": [{"accessKey": "$access_key", "secretKey": "$secret_key"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  # Ports well away from the stages' metrics ports (9091..9096) and Kafka's 19092.
  nohup "$weed" server -dir="$state/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port=$((port + 1000)) -volume.port=$((port + 1001)) -filer.port=$((port + 1002)) \
    -master.volumeSizeLimitMB=256 -volume.max=32 \
    -s3 -s3.port="$port" -s3.config="$state/s3.json" >"$state/server.log" 2>&1 &
  echo $! >"$state/pid"
  for _ in $(seq 1 120); do
    if answers; then break; fi
    sleep 1
  done
  answers || { tail -20 "$state/server.log" >&2; echo "s3: no answer on $endpoint" >&2; exit 1; }
  # The bucket, signed with the test keys (the gateway may answer before the filer is
  # ready to store, so retry).
  for _ in $(seq 1 30); do
    if curl -s -f -o /dev/null -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" \
      --user "$access_key:$secret_key" "$endpoint/$bucket"; then
      echo "s3: answering on $endpoint, bucket $bucket" >&2
      return
    fi
    sleep 1
  done
  echo "s3: cannot create bucket $bucket" >&2
  exit 1
}

down() {
  if [ -f "$state/pid" ]; then
    kill "$(cat "$state/pid")" 2>/dev/null || true
    for _ in $(seq 1 20); do
      kill -0 "$(cat "$state/pid")" 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$(cat "$state/pid")" 2>/dev/null || true
  fi
  rm -rf "$state"
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  status) answers ;;
  env) print_env ;;
  *) echo "usage: $0 build|up|down|status|env" >&2; exit 2 ;;
esac
