#!/usr/bin/env bash
# Make sure a Docker engine answers: start dockerd in the background when none runs, then wait for it.
# An engine that already answers (the user's own, a CI service) is used as it is and never restarted.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "no dockerd here: install Debian's docker.io (bash scripts/ensure_system.sh does)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "no Docker engine answers and starting dockerd needs root; start it (or ask for the docker group)" >&2
    exit 1
fi
# A dockerd that died leaves its pid file behind, and a new one then refuses to start.
pidfile=/var/run/docker.pid
if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    rm -f "$pidfile"
fi
log=/var/log/cwm-dockerd.log
echo "starting dockerd (log: $log)"
setsid nohup dockerd >"$log" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then exit 0; fi
    sleep 1
done
echo "dockerd did not answer within 60 s; the end of $log:" >&2
tail -n 20 "$log" >&2 || true
exit 1
