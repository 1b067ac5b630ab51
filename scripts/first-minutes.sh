#!/usr/bin/env bash
# The newcomer's first minutes: clone this repository into a temporary folder and time the
# README's two set-up commands in order, with an empty build directory. With COLD_CARGO_HOME=1
# the crates are downloaded again too (an empty CARGO_HOME), as on a fresh machine.
#
#   scripts/first-minutes.sh            # prints the wall time of each command
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/qpm-operator"
cd "$work/qpm-operator"
export CARGO_TARGET_DIR="$work/target"
if [ "${COLD_CARGO_HOME:-0}" = 1 ]; then
  export CARGO_HOME="$work/cargo-home"
  mkdir -p "$CARGO_HOME"
  ln -s "$HOME/.cargo/bin" "$CARGO_HOME/bin"
fi
# The two commands, exactly as the README's first code block has them.
mapfile -t cmds < <(awk '/^```sh/{f=1; next} /^```/{if (f) exit} f' README.md | sed 's/ *#.*$//' | grep -v '^$')
if [ "${#cmds[@]}" -ne 2 ]; then
  echo "expected two commands in the README's first block, found ${#cmds[@]}" >&2
  exit 1
fi
total=0
for cmd in "${cmds[@]}"; do
  start=$(date +%s)
  bash -c "$cmd" >"$work/out.log" 2>&1 || { tail -20 "$work/out.log"; echo "failed: $cmd" >&2; exit 1; }
  secs=$(( $(date +%s) - start ))
  total=$(( total + secs ))
  printf '%5d s  %s\n' "$secs" "$cmd"
done
printf '%5d s  both (load average at the end: %s)\n' "$total" "$(cut -d' ' -f1-3 /proc/loadavg)"
