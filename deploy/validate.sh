#!/usr/bin/env bash
# Validates the Kubernetes manifests (deploy/k8s) offline with kubeconform, strictly
# (unknown fields are errors): Kubernetes' own kinds against its JSON schemas, KEDA's
# ScaledObjects and TriggerAuthentications against its CRDs. Everything it needs is
# fetched once into the cache from the registries this machine reaches: kubeconform
# from the Go module proxy, Kubernetes' schemas from PyPI (the kubernetes-validate wheel
# bundles them, generated from each release's OpenAPI), KEDA's CRDs from the
# kedacore/keda Go module, converted by kubeconform's own openapi2jsonschema.py.
#
#   bash deploy/validate.sh [FILE...]     default: deploy/k8s/*.yaml
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${LUPE_CACHE_DIR:-$HOME/.cache/codelupe}/k8s
kubeconform_version=v0.7.0
kubernetes_version=1.33.0
schemas_wheel=kubernetes-validate==1.37.0
keda_version=v2.21.0
mkdir -p "$cache"

# Its own interpreter with PyYAML (the converter and the step below need it).
python="$cache/venv/bin/python3"
if [ ! -x "$python" ]; then
  rm -rf "$cache/venv"
  python3 -m venv "$cache/venv"
  "$python" -m pip install --quiet "pyyaml==6.0.2"
fi

kubeconform="$cache/kubeconform-$kubeconform_version"
if [ ! -x "$kubeconform" ]; then
  GOBIN="$cache/bin" go install "github.com/yannh/kubeconform/cmd/kubeconform@$kubeconform_version"
  mv "$cache/bin/kubeconform" "$kubeconform"
fi

core="$cache/kubernetes-json-schema"
if [ ! -f "$core/.complete" ]; then
  rm -rf "$core" "$cache/wheel"
  "$python" -m pip download --quiet --no-deps -d "$cache/wheel" "$schemas_wheel"
  "$python" - "$cache/wheel" "$core" <<'PY'
import glob, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(f"{wheel}/*.whl")[0]) as z:
    for name in z.namelist():
        if name.startswith("kubernetes_validate/kubernetes-json-schema/"):
            z.extract(name, f"{out}.tmp")
PY
  mv "$core.tmp/kubernetes_validate/kubernetes-json-schema" "$core"
  rm -rf "$core.tmp" "$cache/wheel"
  touch "$core/.complete"
fi

crds="$cache/keda-$keda_version"
mkdir -p "$crds"
for crd in scaledobjects triggerauthentications; do
  if [ ! -f "$crds/.$crd" ]; then
    keda=$(go mod download -json "github.com/kedacore/keda/v2@$keda_version" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    converter=$(go mod download -json "github.com/yannh/kubeconform@$kubeconform_version" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')/scripts/openapi2jsonschema.py
    (cd "$crds" && FILENAME_FORMAT='{kind}_{version}' "$python" "$converter" \
      "$keda/config/crd/bases/keda.sh_$crd.yaml" >/dev/null)
    touch "$crds/.$crd"
  fi
done

if [ $# -eq 0 ]; then set -- "$root"/deploy/k8s/*.yaml; fi
# The wheel's schemas refer to a shared _definitions.json, which kubeconform does not
# resolve: the kinds the manifests use are made standalone (definitions inlined).
standalone=$(mktemp -d)
trap 'rm -rf "$standalone"' EXIT
"$python" - "$core/v$kubernetes_version-local-strict" "$standalone" "$@" <<'PY'
import json, sys, yaml
source, out, manifests = sys.argv[1], sys.argv[2], sys.argv[3:]
definitions = json.load(open(f"{source}/_definitions.json"))["$defs"]
def local(node):
    if isinstance(node, dict):
        return {k: ("#" + v.split("#", 1)[1] if k == "$ref" and isinstance(v, str) else local(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [local(v) for v in node]
    return node
for path in manifests:
    for doc in yaml.safe_load_all(open(path)):
        group = doc["apiVersion"].rpartition("/")[0] if doc else ""
        if not doc or ("." in group and not group.endswith(".k8s.io")):
            continue  # a custom resource: its CRD's schema
        group, _, version = doc["apiVersion"].rpartition("/")
        name = f"{doc['kind'].lower()}{'-' + group.split('.')[0] if group else ''}-{version}.json"
        schema = local(json.load(open(f"{source}/{name}")))
        schema["$defs"] = local(definitions)
        json.dump(schema, open(f"{out}/{name}", "w"))
PY
"$kubeconform" -strict -summary -output text \
  -kubernetes-version "$kubernetes_version" \
  -schema-location "$standalone/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  -schema-location "$crds/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
  "$@"
