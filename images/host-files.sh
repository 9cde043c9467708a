# Sourced by the scripts that build an image from this host's files (images/browser-image.sh,
# tests/security/tools-image.sh). The caller declares `args` (make-image.sh's arguments) and
# `declare -A seen=()`.

# add FILE: the file at its own path in the image (a symlink as the file it names), once.
add() {
  local f=$1
  [[ -n ${seen[$f]:-} ]] && return
  seen[$f]=1
  args+=(--add "$(readlink -f "$f"):$f")
}

# libs_of FILE: the loader and every library ldd resolves for FILE, at the paths it asks for.
libs_of() {
  ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}'
}
