#!/usr/bin/env bash
# Builds an OCI image layout tarball from local files only (no registry, no network), the
# same bytes for the same inputs: one gzip layer, a config, a manifest, index.json naming the
# image, oci-layout. Airlock's built-in `base` image is made this way from Debian's
# busybox-static.
#
# Usage:
#   images/make-image.sh --out FILE.tar --name NAME:TAG [--busybox]
#                        [--add SRC:DEST[:MODE]]... [--add-dir SRC:DEST]...
#                        [--entrypoint JSON] [--cmd JSON]
#                        [--env KEY=VALUE]... [--workdir DIR] [--user USER[:GROUP]]
#
#   --busybox      /bin/busybox (override with $BUSYBOX; it must be statically linked) plus a
#                  symlink for every applet (`busybox --list-full`), /etc/passwd and /etc/group
#                  (root and sandbox 1000), /tmp (1777), /root and /home/sandbox
#   --add          copy the file SRC to the absolute path DEST in the image, mode MODE (octal;
#                  default 0755 if SRC is executable, else 0644); repeatable
#   --add-dir      copy the directory SRC (its contents, symlinks kept as links) to the absolute
#                  path DEST; directories 0755, files 0755 if executable, else 0644; repeatable
#   --entrypoint   a JSON array of strings, e.g. '["/bin/sh"]'
#   --cmd          a JSON array of strings
#   --env          a variable of the config's Env (PATH is set already); repeatable
#   --workdir      the config's WorkingDir;  --user  the config's User
#
# Determinism: entries sorted by name, mtime 0, owner and group 0 (numeric), gzip without a
# name or time stamp, JSON written field by field in a fixed order, `created` at the epoch.
set -euo pipefail
export LC_ALL=C
umask 022

die() {
  echo "make-image: $*" >&2
  exit 1
}

out=""
name=""
busybox=false
entrypoint=""
cmd=""
workdir=""
user=""
adds=()
add_dirs=()
envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a file}"; shift 2 ;;
    --name) name="${2:?--name needs NAME:TAG}"; shift 2 ;;
    --busybox) busybox=true; shift ;;
    --add) adds+=("${2:?--add needs SRC:DEST[:MODE]}"); shift 2 ;;
    --add-dir) add_dirs+=("${2:?--add-dir needs SRC:DEST}"); shift 2 ;;
    --entrypoint) entrypoint="${2:?--entrypoint needs a JSON array}"; shift 2 ;;
    --cmd) cmd="${2:?--cmd needs a JSON array}"; shift 2 ;;
    --env) envs+=("${2:?--env needs KEY=VALUE}"); shift 2 ;;
    --workdir) workdir="${2:?--workdir needs a directory}"; shift 2 ;;
    --user) user="${2:?--user needs USER[:GROUP]}"; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ -n "$out" ] || die "--out FILE.tar is required"
[ -n "$name" ] || die "--name NAME:TAG is required"
[[ "$name" =~ ^[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_][A-Za-z0-9._-]*$ ]] ||
  die "--name must look like NAME:TAG (lowercase name of [a-z0-9._/-], tag of [A-Za-z0-9._-]): $name"
for j in "$entrypoint" "$cmd"; do
  if [ -n "$j" ] && ! [[ "$j" =~ ^\[.*\]$ ]]; then
    die "--entrypoint and --cmd take a JSON array of strings, e.g. '[\"/bin/sh\"]': $j"
  fi
done

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  armv7l|armv6l) arch=arm ;;
  i?86) arch=386 ;;
  ppc64le) arch=ppc64le ;;
  s390x) arch=s390x ;;
  riscv64) arch=riscv64 ;;
  *) die "unsupported machine $(uname -m)" ;;
esac

work="$(mktemp -d "${TMPDIR:-/tmp}/make-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
layout="$work/layout"
mkdir -p "$root" "$layout/blobs/sha256"

# JSON string literal for a value without control characters.
json_str() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  printf '"%s"' "$s"
}

if $busybox; then
  bb="${BUSYBOX:-/bin/busybox}"
  [ -x "$bb" ] || die "$bb is missing: install Debian's busybox-static (scripts/install-deps.sh)"
  if command -v readelf >/dev/null && readelf -l "$bb" 2>/dev/null | grep -q 'INTERP'; then
    die "$bb is dynamically linked and would not run in an image without a libc; install busybox-static"
  fi
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,home/sandbox,tmp}
  cp "$bb" "$root/bin/busybox"
  chmod 0755 "$root/bin/busybox"
  # One symlink per applet, where busybox itself would install it.
  while IFS= read -r applet; do
    case "$applet" in
      bin/busybox) continue ;;
      bin/*|sbin/*|usr/bin/*|usr/sbin/*) ;;
      *) continue ;;  # e.g. "linuxrc": not a command anyone runs in a sandbox
    esac
    [[ "$applet" =~ ^[A-Za-z0-9_./\[-]+$ ]] || die "unexpected applet path from busybox: $applet"
    ln -sfn /bin/busybox "$root/$applet"
  done < <("$bb" --list-full | sort)
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'sandbox:x:1000:1000::/home/sandbox:/bin/sh' \
    >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'sandbox:x:1000:' >"$root/etc/group"
  chmod 0644 "$root/etc/passwd" "$root/etc/group"
  chmod 0700 "$root/root"
  chmod 1777 "$root/tmp"
fi

for spec in "${adds[@]}"; do
  IFS=: read -r src dest mode extra <<<"$spec"
  [ -z "${extra:-}" ] || die "--add takes SRC:DEST[:MODE]: $spec"
  [ -f "$src" ] || die "--add: no such file: $src"
  [[ "$dest" == /* && "$dest" != */ && "/$dest/" != */../* ]] ||
    die "--add: DEST must be an absolute file path without '..': $dest"
  if [ -z "${mode:-}" ]; then
    if [ -x "$src" ]; then mode=0755; else mode=0644; fi
  fi
  [[ "$mode" =~ ^0?[0-7]{3}$ ]] || die "--add: MODE must be octal like 0755: $mode"
  mkdir -p "$root$(dirname "$dest")"
  cp "$src" "$root$dest"
  chmod "$mode" "$root$dest"
done

for spec in "${add_dirs[@]}"; do
  IFS=: read -r src dest extra <<<"$spec"
  [ -z "${extra:-}" ] || die "--add-dir takes SRC:DEST: $spec"
  [ -d "$src" ] || die "--add-dir: no such directory: $src"
  [[ "$dest" == /* && "$dest" != */ && "/$dest/" != */../* ]] ||
    die "--add-dir: DEST must be an absolute directory path without '..': $dest"
  mkdir -p "$root$dest"
  cp -R "$src/." "$root$dest/"
  # Modes that do not depend on the umask or the source's: the same bytes for the same files.
  find "$root$dest" -type d -exec chmod 0755 {} +
  find "$root$dest" -type f -perm /111 -exec chmod 0755 {} +
  find "$root$dest" -type f ! -perm /111 -exec chmod 0644 {} +
done

# The layer: a deterministic tar of the tree, then gzip without name or time stamp.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
  -C "$root" -cf "$work/layer.tar" .
diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
# MAKE_IMAGE_GZIP_LEVEL: 1 for images made at test time, where speed matters more than size.
gzip -n "-${MAKE_IMAGE_GZIP_LEVEL:-9}" <"$work/layer.tar" >"$work/layer.tar.gz"
layer_digest="$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)"
layer_size="$(stat -c %s "$work/layer.tar.gz")"
mv "$work/layer.tar.gz" "$layout/blobs/sha256/$layer_digest"

# The config.
env_json="$(json_str "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")"
for e in "${envs[@]}"; do
  [[ "$e" == *=* ]] || die "--env takes KEY=VALUE: $e"
  env_json+=",$(json_str "$e")"
done
cfg="{\"Env\":[$env_json]"
[ -z "$entrypoint" ] || cfg+=",\"Entrypoint\":$entrypoint"
[ -z "$cmd" ] || cfg+=",\"Cmd\":$cmd"
[ -z "$workdir" ] || cfg+=",\"WorkingDir\":$(json_str "$workdir")"
[ -z "$user" ] || cfg+=",\"User\":$(json_str "$user")"
cfg+="}"
printf '{"architecture":"%s","os":"linux","created":"1970-01-01T00:00:00Z","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$arch" "$cfg" "$diff_id" >"$work/config.json"
config_digest="$(sha256sum "$work/config.json" | cut -d' ' -f1)"
config_size="$(stat -c %s "$work/config.json")"
mv "$work/config.json" "$layout/blobs/sha256/$config_digest"

# The manifest, the index that names it, the layout marker.
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
manifest_digest="$(sha256sum "$work/manifest.json" | cut -d' ' -f1)"
manifest_size="$(stat -c %s "$work/manifest.json")"
mv "$work/manifest.json" "$layout/blobs/sha256/$manifest_digest"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":%s},"platform":{"architecture":"%s","os":"linux"}}]}' \
  "$manifest_digest" "$manifest_size" "$(json_str "$name")" "$arch" >"$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
  -C "$layout" -cf "$out.tmp.$$" oci-layout index.json blobs
mv -f "$out.tmp.$$" "$out"
echo "make-image: $out: $name sha256:$manifest_digest ($(stat -c %s "$out") bytes)" >&2
