#!/usr/bin/env bash
# Run by setup/deps.sh: fetches (once) the trained tables of go-enry's Bayesian language
# classifier, which the runtime's build compiles in (stages/runtime/build.rs). go-enry
# is the Go port of GitHub Linguist that The Stack v2 detected languages with; its
# table was trained on Linguist's samples. It comes from the Go module proxy as the
# module's zip, checked against a pinned SHA-256; only the table and the licence are
# kept, never committed. ENRY_DIR (not CODELUPE_*: those are config keys) moves the cache.
set -euo pipefail
version=v2.9.6
sha256=747d48b691d29a7284964727002846ba8472f4a663e1e347809c2859e0588086
dir=${ENRY_DIR:-$HOME/.cache/codelupe/enry}/$version
[ -s "$dir/frequencies.go" ] && exit 0
echo "setup: fetching go-enry $version's classifier tables (Go module proxy) into $dir" >&2
mkdir -p "$dir"
python3 - "$version" "$sha256" "$dir" <<'PY'
import hashlib, io, os, sys, urllib.request, zipfile
version, sha256, out = sys.argv[1:]
url = f"https://proxy.golang.org/github.com/go-enry/go-enry/v2/@v/{version}.zip"
data = urllib.request.urlopen(url, timeout=300).read()
got = hashlib.sha256(data).hexdigest()
if got != sha256:
    sys.exit(f"setup: {url} has SHA-256 {got}, expected {sha256}")
prefix = f"github.com/go-enry/go-enry/v2@{version}/"
with zipfile.ZipFile(io.BytesIO(data)) as z:
    for member, name in [("LICENSE", "LICENSE"), ("data/frequencies.go", "frequencies.go")]:
        with open(os.path.join(out, name + ".part"), "wb") as f:
            f.write(z.read(prefix + member))
        os.replace(os.path.join(out, name + ".part"), os.path.join(out, name))
PY
