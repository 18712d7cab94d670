#!/bin/bash
# mksigs.sh OUTDIR - build spoold's test signature database with sigtool.
#
# Writes into OUTDIR (created if needed):
#   spoold-test.hdb  MD5 hash signatures:
#                      Spoold.Test.EICAR.HDB    the exact 68-byte EICAR test file
#                      Spoold.Test.ClamExe.HDB  /usr/share/clamav-testfiles/clam.exe
#   spoold-test.ndb  body signature Spoold.Test.EICAR.NDB:0:*:<hex>, matching the middle of
#                    the EICAR string ("EICAR-STANDARD-" "ANTIVIRUS-TEST-FILE", written in
#                    two pieces here) anywhere in any file type
#   eicar.com        the 68-byte EICAR test file, for tests and canaries
#   eicar-encrypted.zip  eicar.com in a zip, stored, ZipCrypto-encrypted with the password
#                    "infected": clamscan says OK without --alert-encrypted=yes and
#                    Heuristics.Encrypted.Zip with it
#   eicar-nested20.zip   eicar.com zipped (deflate) 20 times over, deeper than ClamAV's
#                    MaxRecursion (17): clamscan says OK without --alert-exceeds-max=yes
#                    and Heuristics.Limits.Exceeded.MaxRecursion with it
#
# ClamAV reports names from these databases with ".UNOFFICIAL" appended, for example
# "Spoold.Test.EICAR.NDB.UNOFFICIAL"; for eicar.com the NDB body signature usually wins.
#
# Idempotent: every file is written under a temporary name and renamed into place.
# Needs: sigtool and clamscan (Debian package clamav), clam.exe (package clamav-testfiles),
# python3 (writes the zips: its zipfile module, plus ZipCrypto in a few lines).
# The EICAR string is assembled from two halves so that no scanner flags this script,
# not even one loaded with the body signature above.
set -eu
set -o pipefail

prog=${0##*/}
die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 1
}

if [ $# -ne 1 ] || [ -z "$1" ]; then
	die "usage: $prog OUTDIR"
fi
out=$1

CLAMEXE=/usr/share/clamav-testfiles/clam.exe

for tool in sigtool clamscan python3; do
	command -v "$tool" >/dev/null 2>&1 ||
		die "$tool not found: install the Debian package clamav (apt-get install clamav)"
done
if ! [ -f "$CLAMEXE" ] || ! [ -r "$CLAMEXE" ]; then
	die "$CLAMEXE is missing: install the Debian package clamav-testfiles (apt-get install clamav-testfiles)"
fi

mkdir -p -- "$out"
# Absolute path, so sigtool's output and clamscan's arguments do not depend on the cwd.
out=$(cd -- "$out" && pwd -P)

tmp=$(mktemp -d "$out/.mksigs.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# The EICAR test file, from two halves (see https://www.eicar.org/download-anti-malware-testfile/).
# shellcheck disable=SC2016 # literal dollar signs
eicar_a='X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-'
# shellcheck disable=SC2016
eicar_b='ANTIVIRUS-TEST-FILE!$H+H*'
printf '%s%s' "$eicar_a" "$eicar_b" >"$tmp/eicar.com"
size=$(wc -c <"$tmp/eicar.com")
[ "$size" -eq 68 ] || die "internal error: generated eicar.com has $size bytes, not 68"

# hash signatures: sigtool --md5 prints "md5:size:name"; replace the name field.
md5sig() { # FILE NAME
	local line
	line=$(cd -- "$(dirname -- "$1")" && sigtool --md5 "$(basename -- "$1")") ||
		die "sigtool --md5 $1 failed"
	case $line in
	[0-9a-f]*:[0-9]*:*) ;;
	*) die "unexpected output from sigtool --md5 $1: $line" ;;
	esac
	printf '%s:%s\n' "${line%:*}" "$2"
}
{
	md5sig "$tmp/eicar.com" Spoold.Test.EICAR.HDB
	md5sig "$CLAMEXE" Spoold.Test.ClamExe.HDB
} >"$tmp/spoold-test.hdb"
grep -q '^44d88612fea8a8f36de82e1278abb02f:68:Spoold\.Test\.EICAR\.HDB$' "$tmp/spoold-test.hdb" ||
	die "sigtool produced an unexpected EICAR hash: $(head -n1 "$tmp/spoold-test.hdb")"

# body signature: target 0 (any file), offset * (anywhere).
hex=$(printf '%s' 'EICAR-STANDARD-''ANTIVIRUS-TEST-FILE' | sigtool --hex-dump | tr -d '\n') ||
	die "sigtool --hex-dump failed"
case $hex in
'' | *[!0-9a-f]*) die "unexpected output from sigtool --hex-dump: $hex" ;;
esac
[ ${#hex} -eq 68 ] || die "unexpected hex dump length ${#hex} (expected 68 hex digits): $hex"
printf 'Spoold.Test.EICAR.NDB:0:*:%s\n' "$hex" >"$tmp/spoold-test.ndb"

# Check the database before anything is installed: clamscan exits 1 when it finds a virus.
check() { # DBDIR FILE: prints the clamscan result line; fails unless exit status is 1
	local rc=0 res
	res=$(clamscan --no-summary -d "$1" "$2" 2>&1) || rc=$?
	[ "$rc" -eq 1 ] || die "clamscan -d $1 $2 did not detect the test signature (exit $rc): $res"
	printf '%s\n' "$res"
}
expect() { # DBDIR FILE NAME: clamscan with DBDIR must report FILE as NAME.UNOFFICIAL
	local res
	res=$(check "$1" "$2")
	case $res in
	*": $3.UNOFFICIAL FOUND") ;;
	*) die "clamscan -d $1 $2: expected $3.UNOFFICIAL, got: $res" ;;
	esac
}
# Each database alone must do its job: the hash signatures match the exact files, the
# body signature matches EICAR embedded in other text.
mkdir "$tmp/hdb" "$tmp/ndb" "$tmp/sample"
cp "$tmp/spoold-test.hdb" "$tmp/hdb/"
cp "$tmp/spoold-test.ndb" "$tmp/ndb/"
printf 'text before %s%s text after\n' "$eicar_a" "$eicar_b" >"$tmp/sample/embedded.txt"
expect "$tmp/hdb" "$tmp/eicar.com" Spoold.Test.EICAR.HDB
expect "$tmp/hdb" "$CLAMEXE" Spoold.Test.ClamExe.HDB
expect "$tmp/ndb" "$tmp/eicar.com" Spoold.Test.EICAR.NDB
expect "$tmp/ndb" "$tmp/sample/embedded.txt" Spoold.Test.EICAR.NDB

# The archives a scanner cannot look into: the encrypted one and the over-limit one.
# Deterministic (fixed dates, fixed encryption header), so a rebuild gives the same bytes.
python3 - "$tmp/eicar.com" "$tmp" <<'EOF' || die "cannot write the test zips"
import io, os, struct, sys, zipfile, zlib

eicar, out = open(sys.argv[1], "rb").read(), sys.argv[2]


def crc_byte(c, b):  # one CRC-32 step without the pre/post inversion (ZipCrypto keys)
    return zlib.crc32(bytes([b]), c ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def zipcrypto(password, plain):  # PKWARE APPNOTE 6.1 traditional encryption
    k = [0x12345678, 0x23456789, 0x34567890]

    def update(c):
        k[0] = crc_byte(k[0], c)
        k[1] = ((k[1] + (k[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        k[2] = crc_byte(k[2], k[1] >> 24)

    for c in password:
        update(c)
    res = bytearray()
    for p in plain:
        t = (k[2] | 2) & 0xFFFF
        res.append(p ^ (((t * (t ^ 1)) >> 8) & 0xFF))
        update(p)
    return bytes(res)


def encrypted_zip(name, data, password):  # one stored entry, general-purpose flag bit 0
    crc = zlib.crc32(data)
    body = zipcrypto(password, bytes(range(1, 12)) + bytes([crc >> 24]) + data)
    nm = name.encode()
    common = struct.pack("<HHHHIII", 1, 0, 0, 0x21, crc, len(body), len(data))
    local = struct.pack("<IH", 0x04034B50, 20) + common + struct.pack("<HH", len(nm), 0) + nm
    cdir = (struct.pack("<IHH", 0x02014B50, 20, 20) + common +
            struct.pack("<HHHHHII", len(nm), 0, 0, 0, 0, 0o100644 << 16, 0) + nm)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(cdir), len(local) + len(body), 0)
    return local + body + cdir + end


def deflated_zip(name, data):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data,
                   compress_type=zipfile.ZIP_DEFLATED)
    return b.getvalue()


with open(os.path.join(out, "eicar-encrypted.zip"), "wb") as f:
    f.write(encrypted_zip("eicar.com", eicar, b"infected"))
data, name = eicar, "eicar.com"
for level in range(20, 0, -1):  # deflated, so no level shows the EICAR bytes as they are
    data, name = deflated_zip(name, data), "level-%02d.zip" % level
with open(os.path.join(out, "eicar-nested20.zip"), "wb") as f:
    f.write(data)
EOF

# Without the alert flags clamscan passes both (the hole the flags close); with them it
# must name the heuristic. Anything else means ClamAV changed under us.
alerts() { # FLAGS FILE PATTERN: "EXIT:OUTPUT" of clamscan FLAGS FILE must match PATTERN
	local rc=0 res
	# shellcheck disable=SC2086 # FLAGS is a list of words
	res=$(clamscan --no-summary --stdout -d "$tmp/ndb" $1 "$2" 2>&1) || rc=$?
	# shellcheck disable=SC2254 # PATTERN is a glob on purpose
	case "$rc:$res" in
	$3) ;;
	*) die "clamscan $1 $2: expected $3, got exit $rc: $res" ;;
	esac
}
flags="--alert-encrypted=yes --alert-exceeds-max=yes"
for z in eicar-encrypted.zip eicar-nested20.zip; do
	alerts "" "$tmp/$z" "0:*: OK"
done
alerts "$flags" "$tmp/eicar-encrypted.zip" "1:*: Heuristics.Encrypted.Zip FOUND"
alerts "$flags" "$tmp/eicar-nested20.zip" "1:*: Heuristics.Limits.Exceeded.* FOUND"
# Unpacked far enough, the EICAR inside is found: the zips are well formed.
alerts "--max-recursion=30" "$tmp/eicar-nested20.zip" "1:*: Spoold.Test.EICAR.NDB.UNOFFICIAL FOUND"

# Install: each file by rename, so readers see the old or the new version, never half.
for f in eicar.com eicar-encrypted.zip eicar-nested20.zip spoold-test.hdb spoold-test.ndb; do
	chmod 0644 "$tmp/$f"
	mv -f -- "$tmp/$f" "$out/$f"
done

# Final verification against the installed files, as the project's tests use them.
res=$(check "$out" "$out/eicar.com")
case $res in
*"Spoold.Test.EICAR."*".UNOFFICIAL FOUND"*) ;;
*) die "clamscan -d $out detected eicar.com under an unexpected name: $res" ;;
esac
printf '%s: test signatures in %s (%s)\n' "$prog" "$out" "${res##*: }"
