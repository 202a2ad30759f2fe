#!/bin/sh
# The Debian packages the integration tests talk to (DCMTK, Orthanc and its DICOMweb plugin,
# dicom3tools, Redis, Chromium, docker-compose).
#   deploy/system-deps.sh install PKG...  apt-get update, then install them
#   deploy/system-deps.sh ensure PKG...   install only those missing: as root, or with sudo when it
#                                         needs no password; otherwise one line naming the command
set -eu
mode=$1; shift
apt_install() {
    $1 apt-get update
    $1 env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}
if [ "$mode" = install ]; then
    apt_install "" "$@"
    exit 0
fi
if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "system-deps: not a Debian system, cannot check; the tests need: $*" >&2
    exit 0
fi
missing=""
for pkg in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
echo "system-deps: installing missing Debian packages:$missing"
if [ "$(id -u)" = 0 ]; then
    apt_install "" $missing
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    apt_install sudo $missing
else
    echo "system-deps: missing Debian packages:$missing; run: sudo make system-deps" >&2
    exit 1
fi
