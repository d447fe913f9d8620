# Sourced by .ci/run before anything is built: every C and C++ compilation of the build
# goes through tests/audit/compiler, which records the headers it includes, so that
# tests/audit/check.sh can name the Debian packages the build really needs. The wrappers
# live at a fixed path (cc-based build scripts rebuild when CC changes) and the records
# beside the build outputs they belong to. (Not CODELUPE_*: those are config keys.)
audit_bin=$HOME/.cache/codelupe/audit-bin
mkdir -p "$audit_bin"
install -m 755 "$(dirname "${BASH_SOURCE[0]}")/compiler" "$audit_bin/cc"
install -m 755 "$(dirname "${BASH_SOURCE[0]}")/compiler" "$audit_bin/c++"
export CC=$audit_bin/cc CXX=$audit_bin/c++
export HEADER_AUDIT_DIR=${CARGO_TARGET_DIR:-$PWD/target}/header-audit
mkdir -p "$HEADER_AUDIT_DIR"
