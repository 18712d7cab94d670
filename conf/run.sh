#!/bin/sh
# make run: the pipeline on ./spool, in the foreground, with conf/spoold.conf.
#
# As a plain user, every program runs as that user (single-user mode). As root, the stages
# run separated, as the users of dist/spoold.sysusers (made here if missing: with
# systemd-sysusers when there is one, else useradd/usermod), with a config derived from
# conf/spoold.conf that names them (build/run-separated.conf). That needs the checkout to
# be reachable by those users (no 0700 directory above it, as /root is); when it is not,
# root runs everything as root, as before, and says why.
set -eu
cd "$(dirname "$0")/.."
mkdir -p spool
if [ "$(id -u)" != 0 ]; then
	exec bin/spoold -c conf/spoold.conf
fi

users_make() {
	if command -v systemd-sysusers >/dev/null 2>&1; then
		systemd-sysusers "$(pwd)/dist/spoold.sysusers"
		return
	fi
	# The same lines, by hand: "u NAME - desc home" and "m USER GROUP".
	grep -E '^[um] ' dist/spoold.sysusers | while read -r type name arg _; do
		case $type in
		u) id -u "$name" >/dev/null 2>&1 ||
			useradd --system --user-group --no-create-home --home-dir /nonexistent \
				--shell /usr/sbin/nologin "$name" ;;
		m) getent group "$arg" >/dev/null 2>&1 || groupadd --system "$arg"
			usermod -a -G "$arg" "$name" ;;
		esac
	done
}

users_make
sed -e 's/^user = "";/user = "spoold";/' \
	-e 's/^allow_root = true;/allow_root = false;/' \
	-e 's/^splitter_user = "";/splitter_user = "spoold-split";/' \
	-e 's/^runner_user = "";/runner_user = "spoold-scan";/' \
	-e 's/^router_user = "";/router_user = "spoold-route";/' \
	-e 's/^connector_user = "";/connector_user = "spoold-deliver";/' \
	conf/spoold.conf > build/run-separated.conf
chmod 0644 build/run-separated.conf
for u in spoold spoold-split spoold-scan spoold-route spoold-deliver; do
	grep -q "^[a-z_]*user = \"$u\";" build/run-separated.conf || [ "$u" = spoold ] ||
		{ echo "make run: conf/spoold.conf no longer has the line the $u user goes into" >&2; exit 78; }
	if ! setpriv --reuid="$u" --regid="$u" --init-groups -- \
		test -r build/run-separated.conf -a -x build/sigs -a -x .; then
		echo "make run: user $u cannot reach $(pwd) (a directory above it is closed," \
			"as /root is): running every stage as root instead (allow_root)." >&2
		echo "make run: clone the tree where other users can read it to run the stages" \
			"separated, as in production." >&2
		exec bin/spoold -c conf/spoold.conf
	fi
done
echo "make run: as root: stages separated, as spoold-split, spoold-scan, spoold-route and" \
	"spoold-deliver (build/run-separated.conf)" >&2
exec bin/spoold -c build/run-separated.conf
