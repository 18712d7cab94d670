#!/bin/sh
# Install the Debian packages spoold needs to build, run and test, if any are missing.
# Run as root it calls apt-get; otherwise it prints the exact command to run.
set -eu
PKGS="build-essential pkg-config clang libgmime-3.0-dev libconfig-dev libinotifytools0-dev
clamav clamav-daemon clamav-testfiles python3 ripmime libcurl4-openssl-dev
postfix swaks clang-format"
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
apt-get update -q >/dev/null || apt-get update
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
# clamav-daemon's maintainer scripts may start a system clamd/freshclam; the tests start
# their own clamd on a private socket, so the system ones are left as the package set them.
