#!/usr/bin/env bash
# Install Debian packages for `make setup`: apt-get update, then apt-get install PACKAGE...
#
# A new cloud machine runs unattended-upgrades in its first minutes, holding apt's and
# dpkg's locks: instead of failing at once, wait for it, bounded, and say so. apt waits for
# the dpkg lock itself (-o DPkg::Lock::Timeout); the lists and archives locks it does not
# wait for, so they are waited for here first. apt's locks are fcntl (POSIX) locks: flock(1)
# cannot see them, so they are probed with fcntl from python3.
#
# Environment (defaults in brackets):
#   APT_LOCK_TIMEOUT  seconds to wait for another apt process [600]
#   APT_LOCKS         the lock files to wait for [apt's lists, archives and dpkg locks]
#   APT_GET           the apt-get to run [apt-get]
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 PACKAGE..." >&2
  exit 2
fi

timeout_s="${APT_LOCK_TIMEOUT:-600}"
case "$timeout_s" in
  '' | *[!0-9]*)
    echo "APT_LOCK_TIMEOUT=$timeout_s is not a whole number of seconds: set e.g. APT_LOCK_TIMEOUT=600" >&2
    exit 2 ;;
esac
locks="${APT_LOCKS:-/var/lib/apt/lists/lock /var/cache/apt/archives/lock /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock}"
apt_get="${APT_GET:-apt-get}"

# Exit 0 when another process holds an fcntl lock on the file, 1 when none does (or the
# file does not exist). Probing takes the lock for an instant, as apt itself does.
held() {
  python3 - "$1" <<'PY'
import fcntl, sys
try:
    handle = open(sys.argv[1], "r+")
except OSError:
    sys.exit(1)
try:
    fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    sys.exit(0)
fcntl.lockf(handle, fcntl.LOCK_UN)
sys.exit(1)
PY
}

said=""
wait_for_apt() {
  local deadline=$((SECONDS + timeout_s)) lock
  for lock in $locks; do
    while held "$lock"; do
      if [ -z "$said" ]; then
        echo "waiting up to ${timeout_s} s for another apt process (unattended-upgrades?) to finish (it holds $lock)"
        said=1
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "another apt process still holds $lock after ${timeout_s} s: let it finish (ps -C apt-get,apt,dpkg,unattended-upgr shows it), then run make setup again, or wait longer with APT_LOCK_TIMEOUT=1800 make setup" >&2
        return 1
      fi
      sleep 1
    done
  done
}

wait_for_apt
"$apt_get" -o "DPkg::Lock::Timeout=$timeout_s" update -qq
wait_for_apt
DEBIAN_FRONTEND=noninteractive "$apt_get" -o "DPkg::Lock::Timeout=$timeout_s" install -y -qq \
  --no-install-recommends "$@" >/dev/null
