#!/usr/bin/env bash
# Build Packer and its three plugins from the Go module proxy at pinned versions, and lay the plugins
# out the way `packer init` looks for them, so that nothing is fetched from GitHub.
#
#   packer/tools/build-packer.sh            # prints the packer binary's path on its last line
#
# Cache: ~/.cache/appliance/packer (override with APPLIANCE_PACKER_CACHE). A second run only checks it.
#
# Why Packer 1.9.4: Packer 1.10.0 and later are under the Business Source License; 1.9.x is the last
# MPL-2.0 line. 1.9.5 is not served by the module proxy this project can reach, so 1.9.4 it is.
# Packer 1.9 has no `packer plugins install --path` (added in 1.10), so this script does what that
# command does: it copies each plugin binary to
#   $PACKER_PLUGIN_PATH/github.com/hashicorp/NAME/packer-plugin-NAME_vX.Y.Z_xA.B_linux_amd64
# beside a `_SHA256SUM` file, which is exactly where `packer init` finds installed plugins.
#
# Packer 1.9 also vendors ~40 once-bundled plugins (amazon, azure, vsphere, ...). None is used here;
# the build drops them from command/vendored_plugins.go (the same change Packer 1.10 made upstream),
# which saves most of the download and compile time. The qemu/ansible plugins come from their pinned
# standalone releases instead.
set -euo pipefail

PACKER_VERSION=v1.9.4
# name=module@version=sum (the module zip's go.sum hash, checked after the download). The newest
# release of each that the module proxy serves; all MPL-2.0.
PACKER_SUM="h1:r/n4mYlRHzTEmn8iDgoYlratNXEFtzMzzXQM0Puh2dI="
PLUGINS=(
  "qemu=github.com/hashicorp/packer-plugin-qemu@v1.0.9=h1:1YKBBzBULYUBWtpAZJTbaLjjZPAdQ63okkpTqMBTnzM="
  "openstack=github.com/hashicorp/packer-plugin-openstack@v1.1.2=h1:H6NBoB9vfNFIcGcsYwHd0yHbYyw1d/hH801oeMWtSsk="
  "ansible=github.com/hashicorp/packer-plugin-ansible@v1.1.2=h1:J4xtCW9jAgIWHbJKpDiNwhRuaf9EjwMv/Hj25qIvWMg="
)
# The checksum database has no entry for the ansible plugin's releases (the proxy serves them):
# skip that lookup for it alone; the pinned sum above is checked instead.
export GONOSUMDB=github.com/hashicorp/packer-plugin-ansible

CACHE=${APPLIANCE_PACKER_CACHE:-$HOME/.cache/appliance/packer}
BIN=$CACHE/bin
PLUGIN_PATH=$CACHE/plugins
SRC=$CACHE/src
mkdir -p "$BIN" "$PLUGIN_PATH" "$SRC"
export GOFLAGS=-mod=mod CGO_ENABLED=0
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

log() { echo "build-packer: $*" >&2; }

# Copy a module's source out of the read-only module cache into $SRC/NAME, fresh, after checking
# its hash against the pinned one.
fetch() {
  local mod=$1 dir=$2 sum=$3 moddir
  moddir=$(go mod download -json "$mod" | python3 -c '
import json, sys
info = json.load(sys.stdin)
if info.get("Error") or "Dir" not in info:
    sys.exit("build-packer: cannot download %s: %s" % (sys.argv[1], info.get("Error")))
if info.get("Sum") != sys.argv[2]:
    sys.exit("build-packer: %s has hash %s, expected %s" % (sys.argv[1], info.get("Sum"), sys.argv[2]))
print(info["Dir"])' "$mod" "$sum")
  rm -rf "$dir"
  cp -r "$moddir" "$dir"
  chmod -R u+w "$dir"
}

packer_bin=$BIN/packer-${PACKER_VERSION#v}
if [[ ! -x $packer_bin ]]; then
  log "building packer $PACKER_VERSION (about 3-6 min on 2 cores with a cold Go cache)"
  dir=$SRC/packer
  fetch "github.com/hashicorp/packer@$PACKER_VERSION" "$dir" "$PACKER_SUM"
  python3 - "$dir/command/vendored_plugins.go" <<'EOF'
import re, sys
path = sys.argv[1]
src = open(path).read()
# Drop the imports of once-bundled plugins and the map entries that use them.
src = re.sub(r'^\s*\w+ "github\.com/hashicorp/packer-plugin-(?!sdk)[^"]+"\n', "", src, flags=re.M)
src = re.sub(r'^\s*"[^"]+":\s+new\([^)]*\),\n', "", src, flags=re.M)
open(path, "w").write(src)
EOF
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$packer_bin.tmp" .)
  mv "$packer_bin.tmp" "$packer_bin"
fi
ln -sf "$(basename "$packer_bin")" "$BIN/packer"

for entry in "${PLUGINS[@]}"; do
  name=${entry%%=*}
  rest=${entry#*=}
  mod=${rest%%=*}
  sum=${rest#*=}
  version=${mod#*@}
  target_dir=$PLUGIN_PATH/github.com/hashicorp/$name
  if compgen -G "$target_dir/packer-plugin-${name}_${version}_x*_linux_amd64" >/dev/null; then
    continue
  fi
  log "building packer-plugin-$name $version"
  dir=$SRC/plugin-$name
  fetch "$mod" "$dir" "$sum"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/packer-plugin-$name" .)
  # The plugin says which protocol it speaks; that goes into the file name.
  api=$("$BIN/packer-plugin-$name" describe | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_version"])')
  mkdir -p "$target_dir"
  dest=$target_dir/packer-plugin-${name}_${version}_${api}_linux_amd64
  install -m 0755 "$BIN/packer-plugin-$name" "$dest"
  sha256sum "$dest" | cut -d' ' -f1 | tr -d '\n' >"${dest}_SHA256SUM"
  rm -f "$BIN/packer-plugin-$name"
done
rm -rf "$SRC"
touch "$packer_bin"  # make compares its time with this script's
echo "$BIN/packer"
