#!/usr/bin/env bash
# The lines of a step's log that say what failed, so a CI page that shows only the end of the
# output still names the failing tests and tasks. Usage: failure-digest.sh LOG [MAX_LINES]
set -euo pipefail
log=$1 max=${2:-60}
[[ -f $log ]] || { echo "no log at $log"; exit 0; }
# Strip colour codes and Molecule's box-drawing prefix before matching.
sed -E 's/\x1b\[[0-9;]*[A-Za-z]//g; s/^[[:space:]]*│[[:space:]]?//' "$log" |
  grep -E -e '^(FAILED|ERROR) ' \
    -e '^E  ' \
    -e '^=+ .*(failed|error).* in [0-9.]+s' \
    -e 'fatal: \[' -e 'FAILED! =>' -e '"msg":' -e '\[ERROR\]' \
    -e ' failed=[1-9]' -e 'unreachable=[1-9]' \
    -e '^=== molecule test -s ' -e '^=== scenario .* FAILED' \
    -e 'CRITICAL' -e '^[^ ]+:[0-9]+(:[0-9]+)?: ' |
  cut -c1-300 | tail -n "$max" || true
