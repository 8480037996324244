#!/usr/bin/env bash
# Create, destroy and inspect one booted Debian 13 test machine (systemd-nspawn).
#
#   nspawn-machine.sh create NAME N [--bind HOST_PATH:MACHINE_PATH]...
#       boots NAME at 10.213.N.2 (host side 10.213.N.1), waits for SSH and
#       prints the instance as JSON (address, user, identity file, ...)
#   nspawn-machine.sh destroy NAME    stop it, remove its files and host veth
#   nspawn-machine.sh status NAME     "running" or "absent" (exit 1 when absent)
#   nspawn-machine.sh shell NAME [CMD...]   root shell inside, via nsenter
#   nspawn-machine.sh ssh NAME [CMD...]     SSH as the molecule user
#   nspawn-machine.sh leader NAME     PID of its init (for nsenter -t PID -n: its network)
set -euo pipefail
# shellcheck source=scripts/nspawn-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/nspawn-lib.sh"

SSH_OPTS=(-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
  -o LogLevel=ERROR -o IdentitiesOnly=yes -o ConnectTimeout=3)
BOOT_TIMEOUT=${APPLIANCE_BOOT_TIMEOUT:-120}

usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

validate_name() {
  [[ $1 =~ ^[a-z0-9][a-z0-9-]{0,39}$ ]] || die "machine name '$1' must match [a-z0-9][a-z0-9-]*"
}

machine_ip() { printf '%s.%s.2\n' "$APPLIANCE_SUBNET_PREFIX" "$(<"$(machine_dir "$1")/subnet")"; }

instance_json() {
  local name=$1 n
  n=$(<"$(machine_dir "$name")/subnet")
  printf '{"instance": "%s", "address": "%s.%s.2", "user": "molecule", "port": 22, ' \
    "$name" "$APPLIANCE_SUBNET_PREFIX" "$n"
  printf '"identity_file": "%s", "become_method": "sudo", "host_interface": "%s", ' \
    "$APPLIANCE_SSH_KEY" "$(cat "$(machine_dir "$name")/host-interface" 2>/dev/null)"
  printf '"machine_dir": "%s", "subnet": %s}\n' "$(machine_dir "$name")" "$n"
}

subnet_in_use_by_other() {
  local name=$1 n=$2 other
  for other in $(running_machines); do
    [[ $other != "$name" && $(<"$(machine_dir "$other")/subnet") == "$n" ]] && { echo "$other"; return 0; }
  done
  return 1
}

configure_rootfs() {
  local name=$1 n=$2 root=$3 uid gid ns
  install -d -m 0755 "$root/etc/systemd/network"
  {
    printf '[Match]\nName=host0\n\n[Network]\nAddress=%s.%s.2/24\nGateway=%s.%s.1\n' \
      "$APPLIANCE_SUBNET_PREFIX" "$n" "$APPLIANCE_SUBNET_PREFIX" "$n"
    for ns in $(host_nameservers); do printf 'DNS=%s\n' "$ns"; done
    printf 'LinkLocalAddressing=no\nIPv6AcceptRA=no\n'
  } >"$root/etc/systemd/network/10-host0.network"
  rm -f "$root/etc/resolv.conf"
  { for ns in $(host_nameservers); do printf 'nameserver %s\n' "$ns"; done; } >"$root/etc/resolv.conf"
  printf '%s\n' "$name" >"$root/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    "$name" >"$root/etc/hosts"
  share_debs "$root"
  uid=$(awk -F: '$1=="molecule" {print $3}' "$root/etc/passwd")
  gid=$(awk -F: '$1=="molecule" {print $4}' "$root/etc/passwd")
  install -d -m 0700 -o "$uid" -g "$gid" "$root/home/molecule/.ssh"
  install -m 0600 -o "$uid" -g "$gid" "$APPLIANCE_SSH_KEY.pub" "$root/home/molecule/.ssh/authorized_keys"
}

# Downloaded .deb files are shared by all machines and runs. Not by bind-mounting one directory
# as every machine's /var/cache/apt/archives: apt locks that directory for a whole install, so
# machines installing at the same time would wait for each other (and time out). Instead each
# machine finds the shared packages as symlinks and adds what it downloads before dpkg runs.
share_debs() {
  local root=$1 f
  for f in "$APPLIANCE_APT_ARCHIVES"/*.deb; do
    [[ -f $f ]] && ln -sf "/var/cache/apt-shared/${f##*/}" "$root/var/cache/apt/archives/"
  done
  install -m 0755 /dev/stdin "$root/usr/local/sbin/test-platform-share-debs" <<'HOOK'
#!/bin/sh
# Test machine only (scripts/nspawn-machine.sh): offer downloaded packages to the other machines.
shared=/var/cache/apt-shared
[ -d "$shared" ] && [ -w "$shared" ] || exit 0
for f in /var/cache/apt/archives/*.deb; do
  { [ -f "$f" ] && [ ! -L "$f" ]; } || continue
  name=${f##*/}
  [ -e "$shared/$name" ] && continue
  if cp "$f" "$shared/.$name.$$"; then mv -f "$shared/.$name.$$" "$shared/$name"; else rm -f "$shared/.$name.$$"; fi
done
exit 0
HOOK
  printf '%s\n' '// Test machine only: share downloaded packages (scripts/nspawn-machine.sh).' \
    'DPkg::Pre-Invoke { "/usr/local/sbin/test-platform-share-debs || true"; };' \
    >"$root/etc/apt/apt.conf.d/90-test-platform-share-debs"
}

host_interface_of() {
  local machine=$1 leader idx name i
  for i in $(seq 1 50); do
    leader=$(machine_leader "$machine")
    # "2: host0@if7: ..." inside the machine: 7 is the host side's ifindex.
    idx=$(nsenter -t "$leader" -n ip -o link show host0 2>/dev/null \
      | sed -n 's/^[0-9]*: host0@if\([0-9]*\):.*/\1/p' || true)
    if [[ -n $idx ]]; then
      name=$(ip -o link show | awk -F': ' -v i="$idx" '$1==i {print $2}' | cut -d@ -f1)
      [[ -n $name ]] && { printf '%s\n' "$name"; return 0; }
    fi
    sleep 0.2
  done
  return 1
}

cmd_create() {
  local name=$1 n=$2; shift 2
  local binds=() bind other dir root base pid leader hostif i start
  while (($#)); do
    case $1 in
      --bind=*) bind=${1#--bind=}; shift ;;
      --bind) bind=${2:-}; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
    [[ $bind == /*:/* ]] || die "--bind takes HOST_PATH:MACHINE_PATH, got '$bind'"
    install -d "${bind%%:*}"
    binds+=("--bind=$bind")
  done
  validate_name "$name"
  if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1 || n > 254)); then die "subnet number must be 1..254, got '$n'"; fi
  require_root
  dir=$(machine_dir "$name")
  if [[ -n $(machine_pid "$name") ]]; then
    [[ $(<"$dir/subnet") == "$n" ]] || die "$name already runs with subnet $(<"$dir/subnet")"
    instance_json "$name"; return 0
  fi
  if other=$(subnet_in_use_by_other "$name" "$n"); then die "subnet $n is used by running machine $other"; fi
  start=$(date +%s%N)
  ensure_ssh_key
  install -d -m 0755 "$APPLIANCE_APT_ARCHIVES/partial"
  [[ -d $dir ]] && cmd_destroy "$name" >/dev/null
  install -d -m 0700 "$dir"
  root=$dir/rootfs
  for i in 1 2 3; do
    base=$("$SCRIPTS_DIR/nspawn-base-image.sh")
    # Shared lock: a rebuild of the base image (exclusive lock) must not delete it under the copy.
    if (
      flock -s 8
      [[ -f $(dirname "$base")/.complete ]] || exit 1
      cp --reflink=auto -a "$base" "$root"
    ) 8>"$APPLIANCE_CACHE/base/.lock"; then
      break
    fi
    rm -rf --one-file-system "$root"
    ((i < 3)) || die "base image vanished three times while copying it"
  done
  printf '%s\n' "$n" >"$dir/subnet"
  configure_rootfs "$name" "$n" "$root"

  # setsid: the machine must outlive the ansible task (and a killed molecule) until destroy.
  SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 setsid systemd-nspawn --register=no --keep-unit -q -b \
    -D "$root" --machine="$name" --network-veth --capability=all \
    --system-call-filter='@keyring bpf' --resolv-conf=off --link-journal=no \
    --console=read-only \
    --bind="$APPLIANCE_APT_ARCHIVES:/var/cache/apt-shared" "${binds[@]}" \
    </dev/null >"$dir/console.log" 2>&1 &
  pid=$!
  printf '%s\n' "$pid" >"$dir/nspawn.pid"
  for i in $(seq 1 100); do
    leader=$(machine_leader "$name")
    [[ -n $leader ]] && break
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir/console.log" >&2; die "systemd-nspawn exited"; }
    sleep 0.1
  done
  [[ -n ${leader:-} ]] || die "no container init after 10 s"
  # nspawn shortens ve-NAME to 15 characters its own way; ask the kernel which veth is ours.
  hostif=$(host_interface_of "$name") || die "no host0 interface in $name"
  printf '%s\n' "$hostif" >"$dir/host-interface"
  ip addr replace "$APPLIANCE_SUBNET_PREFIX.$n.1/24" dev "$hostif"
  ip link set "$hostif" up
  nat_up
  for i in $(seq 1 "$((BOOT_TIMEOUT * 2))"); do
    if ssh "${SSH_OPTS[@]}" -i "$APPLIANCE_SSH_KEY" "molecule@$APPLIANCE_SUBNET_PREFIX.$n.2" true 2>/dev/null; then
      log "$name up at $APPLIANCE_SUBNET_PREFIX.$n.2 (veth $hostif) in $(( ($(date +%s%N) - start) / 1000000 )) ms"
      instance_json "$name"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir/console.log" >&2; die "systemd-nspawn exited"; }
    sleep 0.5
  done
  tail -n 30 "$dir/console.log" >&2
  die "no SSH on $name after ${BOOT_TIMEOUT}s"
}

# nspawn processes of NAME, also when the pid file is missing (run killed during create).
nspawn_pids_of() {
  local p
  for p in $(pgrep -x systemd-nspawn || true); do
    tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | grep -qx -- "--machine=$1" && echo "$p"
  done
  return 0
}

# wait_gone SECONDS PID...: true once none of the processes exists any more.
wait_gone() {
  local seconds=$1 p i; shift
  for ((i = 0; i < seconds * 10; i++)); do
    for p in "$@"; do kill -0 "$p" 2>/dev/null && break; p=; done
    [[ -z ${p:-} ]] && return 0
    sleep 0.1
  done
  return 1
}

cmd_destroy() {
  local name=$1 dir p hostif pids=() leaders=()
  validate_name "$name"
  require_root
  dir=$(machine_dir "$name")
  mapfile -t pids < <(nspawn_pids_of "$name")
  if ((${#pids[@]})); then
    mapfile -t leaders < <(for p in "${pids[@]}"; do pgrep -P "$p" || true; done)
    # First SIGTERM: orderly poweroff. The machine is thrown away, so it gets a few seconds only
    # (a lingering user manager can hold the poweroff for 2 minutes); the second SIGTERM makes
    # nspawn terminate the container at once and clean up after itself.
    kill -TERM "${pids[@]}" 2>/dev/null || true
    if ! wait_gone 5 "${pids[@]}"; then
      kill -TERM "${pids[@]}" 2>/dev/null || true
      wait_gone 10 "${pids[@]}" || true
    fi
    # Last resort. Killing the namespace's PID 1 kills everything inside it.
    kill -KILL "${pids[@]}" "${leaders[@]}" 2>/dev/null || true
    wait_gone 5 "${pids[@]}" "${leaders[@]}" \
      || die "processes of $name survive SIGKILL: ${pids[*]} ${leaders[*]}"
  fi
  hostif=$(cat "$dir/host-interface" 2>/dev/null || true)
  if [[ -n $hostif ]] && ip link show "$hostif" >/dev/null 2>&1; then ip link delete "$hostif" || true; fi
  if [[ -d $dir ]]; then
    # Nothing may stay mounted below the machine (bind mounts live in nspawn's namespace,
    # but a crashed run could have left one); never delete through a mount.
    findmnt -rn -o TARGET | grep -F "$dir/" | sort -r | xargs -r -n1 umount -l || true
    rm -rf --one-file-system "$dir"
  fi
  # nspawn leaves this (empty) directory behind.
  rmdir "/run/systemd/nspawn/propagate/$name" 2>/dev/null || true
  nat_down_if_unused
  log "$name destroyed"
}

cmd_status() {
  if [[ -n $(machine_pid "$1") ]]; then echo running; else echo absent; return 1; fi
}

cmd_shell() {
  local name=$1 leader; shift
  leader=$(machine_leader "$name")
  [[ -n $leader ]] || die "$name is not running"
  if (($#)); then exec nsenter -t "$leader" -a "$@"; fi
  exec nsenter -t "$leader" -a /bin/bash -l
}

cmd_leader() {
  local leader
  leader=$(machine_leader "$1")
  [[ -n $leader ]] || die "$1 is not running"
  printf '%s\n' "$leader"
}

cmd_ssh() {
  local name=$1; shift
  exec ssh "${SSH_OPTS[@]}" -i "$APPLIANCE_SSH_KEY" "molecule@$(machine_ip "$name")" "$@"
}

(($# >= 2)) || usage
action=$1; shift
case $action in
  create) (($# >= 2)) || usage; cmd_create "$@" ;;
  destroy) cmd_destroy "$1" ;;
  status) cmd_status "$1" ;;
  shell) cmd_shell "$@" ;;
  ssh) cmd_ssh "$@" ;;
  leader) cmd_leader "$1" ;;
  *) usage ;;
esac
