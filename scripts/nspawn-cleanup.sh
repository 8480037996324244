#!/usr/bin/env bash
# Remove test machines left behind by a killed or failed run.
#   nspawn-cleanup.sh            every machine of the platform (all mol-* / all under the machines dir)
#   nspawn-cleanup.sh NAME...    only these machines
# Afterwards the NAT table is removed if no machine is left. Prints what remains, if anything.
set -euo pipefail
# shellcheck source=scripts/nspawn-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/nspawn-lib.sh"
require_root

names=("$@")
if ((${#names[@]} == 0)); then
  mapfile -t names < <(
    {
      [[ -d $APPLIANCE_MACHINES ]] && find "$APPLIANCE_MACHINES" -mindepth 1 -maxdepth 1 -type d -printf '%f\n'
      # nspawn processes booted from our machines dir, even without a machine dir (killed create).
      for p in $(pgrep -x systemd-nspawn || true); do
        tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | grep -qx -- "$APPLIANCE_MACHINES/[^/]*/rootfs" \
          && tr '\0' '\n' <"/proc/$p/cmdline" | sed -n 's/^--machine=//p'
      done
    } | sort -u
  )
fi

for name in "${names[@]}"; do
  [[ -n $name ]] && "$SCRIPTS_DIR/nspawn-machine.sh" destroy "$name"
done

nat_down_if_unused

left=$( { pgrep -a -x systemd-nspawn | grep -F -- "$APPLIANCE_MACHINES/" || true; } )
[[ -z $left ]] || log "still running: $left"
log "machines dir: $(find "$APPLIANCE_MACHINES" -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null)"
# A veth's host side dies with the machine's network namespace: any left belongs to a live machine.
log "veths: $(ip -br link | awk '/^ve-/ {print $1}' | tr '\n' ' ')"
log "nft tables: $(nft list tables 2>/dev/null | tr '\n' ' ')"
