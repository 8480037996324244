# shellcheck shell=bash disable=SC2034  # the settings are used by the scripts sourcing this file
# Shared settings and helpers of the nspawn test platform; sourced, never run.

APPLIANCE_CACHE=${APPLIANCE_CACHE:-/var/cache/appliance-molecule}
APPLIANCE_MACHINES=${APPLIANCE_MACHINES:-/var/lib/appliance-molecule/machines}
APPLIANCE_SUITE=${APPLIANCE_SUITE:-trixie}
APPLIANCE_SUBNET_PREFIX=10.213
APPLIANCE_NFT_TABLE=${APPLIANCE_NFT_TABLE:-molecule_nat}
APPLIANCE_SSH_KEY=$APPLIANCE_CACHE/ssh/id_ed25519
APPLIANCE_APT_ARCHIVES=$APPLIANCE_CACHE/apt-archives
SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (systemd-nspawn, veth, nftables)"; }

# The host's own Debian mirror: only it is reachable from CI machines.
host_mirror() {
  local kind=${1:-debian} uri
  if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    uri=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/debian.sources \
      | if [[ $kind == security ]]; then grep -- '-security' ; else grep -v -- '-security'; fi | head -n1)
  fi
  if [[ -z ${uri:-} && -r /etc/apt/sources.list ]]; then
    uri=$(awk '/^deb / {print $2}' /etc/apt/sources.list \
      | if [[ $kind == security ]]; then grep -- '-security' ; else grep -v -- '-security'; fi | head -n1)
  fi
  if [[ -z ${uri:-} ]]; then
    if [[ $kind == security ]]; then uri=http://deb.debian.org/debian-security; else uri=http://deb.debian.org/debian; fi
  fi
  printf '%s\n' "$uri"
}

host_nameservers() {
  awk '/^nameserver/ {print $2}' /etc/resolv.conf | grep -v '^127\.' || true
}

ensure_ssh_key() {
  if [[ ! -f $APPLIANCE_SSH_KEY ]]; then
    install -d -m 0700 "$(dirname "$APPLIANCE_SSH_KEY")"
    ssh-keygen -q -t ed25519 -N '' -C molecule@appliance-test -f "$APPLIANCE_SSH_KEY"
  fi
}

machine_dir() { printf '%s/%s\n' "$APPLIANCE_MACHINES" "$1"; }

# PID of the systemd-nspawn process of a machine, empty when it is not running.
machine_pid() {
  local pidfile pid
  pidfile=$(machine_dir "$1")/nspawn.pid
  [[ -f $pidfile ]] || return 0
  pid=$(<"$pidfile")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--machine=$1 "; then
    printf '%s\n' "$pid"
  fi
}

# The container's PID 1 (systemd), child of the nspawn process. While nspawn starts, its
# short-lived "outer child" is the only child: not the leader yet.
machine_leader() {
  local pid
  pid=$(machine_pid "$1")
  [[ -n $pid ]] || return 0
  pgrep -P "$pid" -x systemd | head -n1 || true
}

# The NAT table is shared by all machines: create and remove it under a lock.
nat_lock() { install -d "$APPLIANCE_CACHE"; exec 7>"$APPLIANCE_CACHE/.nat.lock"; flock 7; }
nat_unlock() { exec 7>&-; }

nat_up() {
  nat_lock
  sysctl -q -w net.ipv4.ip_forward=1
  if ! nft list table ip "$APPLIANCE_NFT_TABLE" >/dev/null 2>&1; then
    nft -f - <<NFT
table ip $APPLIANCE_NFT_TABLE {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $APPLIANCE_SUBNET_PREFIX.0.0/16 oifname != "ve-*" masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    ip saddr $APPLIANCE_SUBNET_PREFIX.0.0/16 accept
    ip daddr $APPLIANCE_SUBNET_PREFIX.0.0/16 accept
  }
}
NFT
  fi
  # Docker leaves the iptables FORWARD policy at DROP; an accept in our own table cannot override
  # it. Only then touch iptables: with iptables-nft, setting a policy creates a `table ip filter`.
  if command -v iptables >/dev/null 2>&1 && iptables -S FORWARD 2>/dev/null | grep -qx -- '-P FORWARD DROP'; then
    iptables -P FORWARD ACCEPT
    log "iptables FORWARD policy was DROP, set to ACCEPT"
  fi
  nat_unlock
}

running_machines() {
  local d name
  [[ -d $APPLIANCE_MACHINES ]] || return 0
  for d in "$APPLIANCE_MACHINES"/*/; do
    [[ -d $d ]] || continue
    name=$(basename "$d")
    [[ -n $(machine_pid "$name") ]] && printf '%s\n' "$name"
  done
  return 0
}

nat_down_if_unused() {
  nat_lock
  if [[ -z $(running_machines) ]] && nft list table ip "$APPLIANCE_NFT_TABLE" >/dev/null 2>&1; then
    nft delete table ip "$APPLIANCE_NFT_TABLE"
    log "removed nft table ip $APPLIANCE_NFT_TABLE (no machine left)"
  fi
  nat_unlock
}
