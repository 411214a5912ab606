#!/usr/bin/env bash
# Install the Debian packages the sandboxes (and the browser test of `cwm view`) need, only when they are missing.
set -euo pipefail
need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# a registry on loopback for the test of `cwm swe eval --image-source official`
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
[ -x /usr/bin/chromium ] || need+=(chromium)      # tests/test_view.py drives it headless
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing ${need[*]}; installing them needs root; fix: apt-get install ${need[*]} (as root)" >&2
        exit 1
    fi
    echo "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
