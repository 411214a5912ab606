#!/usr/bin/env bash
# Make sure a Docker engine answers: start dockerd in the background when none runs, then wait for it.
# An engine that already answers (the user's own, a CI service) is used as it is and never restarted.
# When none can be had, the last line on stderr says why and how to fix it, and the exit code is 1.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "no Docker engine: dockerd is not installed; fix: install Debian's docker.io (bash scripts/ensure_system.sh, as root)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "no Docker engine answers and starting dockerd needs root; fix: run this as root, start your engine (systemctl start docker), or join the docker group" >&2
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
pid=$!
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then exit 0; fi
    # a dockerd that exits (no privileges for its mounts or iptables, a broken config) will not answer later
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
done
why=$(grep -iE 'level=(fatal|error)|failed|permission denied' "$log" | tail -n 1 | sed -E 's/^.*msg="?//; s/"$//' | cut -c1-160)
if kill -0 "$pid" 2>/dev/null; then state="did not answer within 60 s"; else state="exited"; fi
echo "no Docker engine: dockerd $state (${why:-see $log}); fix: run on a host or a privileged container, or point DOCKER_HOST at a running engine (full log: $log)" >&2
exit 1
