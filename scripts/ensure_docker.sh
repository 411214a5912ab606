#!/usr/bin/env bash
# Make sure a Docker engine answers: start dockerd in the background when none runs, then wait for it.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
echo "starting dockerd (log: /var/log/cwm-dockerd.log)"
setsid nohup dockerd >/var/log/cwm-dockerd.log 2>&1 < /dev/null &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then exit 0; fi
    sleep 1
done
echo "dockerd did not answer within 60 s; see /var/log/cwm-dockerd.log" >&2
tail -n 20 /var/log/cwm-dockerd.log >&2 || true
exit 1
