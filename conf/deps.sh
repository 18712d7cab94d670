#!/bin/sh
# Install the Debian packages spoold needs, if any are missing.
#   conf/deps.sh          to build and run (make run)
#   conf/deps.sh --test   also what the tests use (make test, bench-farm): Postfix and
#                         swaks for the MTA test, ripmime, clang for fuzzing, clang-format,
#                         PostgreSQL for the fleet test, strace for t_sync.
#   conf/deps.sh --bench  the --test set plus what only the benchmarks compare against
#                         (make bench, bench-mta, bench-peer): amavisd-new. make test never
#                         asks for it. Debian's package starts (and enables) its own amavisd
#                         on install; the benches stop it and run a private instance
#                         (bench/amavis.py).
# Postfix is only installed for the tests: on a machine with another MTA, apt-get would
# replace it, so `make run` never asks for it.
# Run as root it calls apt-get; otherwise it prints the exact command to run.
set -eu
PKGS="build-essential pkg-config libgmime-3.0-dev libconfig-dev libinotifytools0-dev
libcurl4-openssl-dev nettle-dev liblmdb-dev libpq-dev clamav clamav-daemon clamav-testfiles python3"
if [ "${1:-}" = "--test" ] || [ "${1:-}" = "--bench" ]; then
	# strace: tests/t_sync.py checks which sync calls each strategy makes
	# postgresql: the fleet test's throwaway cluster (tests/t_fleet.py, initdb + pg_ctl)
	PKGS="$PKGS clang clang-format ripmime postfix swaks postgresql strace"
fi
if [ "${1:-}" = "--bench" ]; then
	# amavisd-new: the peer the benches measure spoold against (docs/PERFORMANCE.md)
	# linux-perf: bench/profile.py (make bench-profile)
	PKGS="$PKGS amavisd-new linux-perf"
fi
missing=""
for p in $PKGS; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$st" in
	*"install ok installed"*) ;;
	*) missing="$missing $p" ;;
	esac
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "spoold: missing packages:$missing" >&2
	echo "run as root:  apt-get update && apt-get install -y --no-install-recommends$missing" >&2
	exit 1
fi
echo "spoold: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine.
# Wait for another apt-get (an unattended upgrade, a second make) instead of failing at
# once on its lock.
LOCK="-o DPkg::Lock::Timeout=600"
# shellcheck disable=SC2086
apt-get $LOCK update -q >/dev/null || apt-get $LOCK update
# shellcheck disable=SC2086
apt-get $LOCK install -y -q --no-install-recommends $missing
