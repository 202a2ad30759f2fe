#!/bin/sh
# Fetch the OHIF Viewer's built app (npm package @ohif/app, its dist/ folder) from the npm registry,
# check it against the pinned integrity, and unpack it where srnode serves it from (/ohif).
# Nothing is fetched at run time: the node serves these files from disk.
#   usage: deploy/fetch-ohif.sh VERSION INTEGRITY DEST
set -eu
version=$1 integrity=$2 dest=$3
if ! command -v npm >/dev/null 2>&1; then
    echo "fetch-ohif: npm not found; install Node.js and npm (Debian: apt-get install nodejs npm), then run make viewer" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-ohif: @ohif/app@$version from the npm registry (about 50 MB)"
(cd "$tmp" && npm pack --silent "@ohif/app@$version" >/dev/null)
tgz=$(ls "$tmp"/ohif-app-"$version".tgz)
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 | tr -d '\n')"
if [ "$got" != "$integrity" ]; then
    echo "fetch-ohif: integrity mismatch for @ohif/app@$version: expected $integrity, got $got" >&2
    exit 1
fi
tar -xzf "$tgz" -C "$tmp" package/dist package/LICENSE
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/package/dist" "$dest"
cp "$tmp/package/LICENSE" "$dest/LICENSE.OHIF"
touch "$dest/.installed-$version"
echo "fetch-ohif: OHIF $version in $dest"
