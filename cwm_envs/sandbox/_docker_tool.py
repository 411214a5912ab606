"""A helper that the docker sandbox runs inside its containers (`python3 -c SOURCE ...`), one process, no fork:
it must start even when a fork bomb holds every pid the container may have.

`kill TOKEN`: stop, then SIGKILL, every process whose `CWM_EXEC` marker is TOKEN or missing (children forked
meanwhile carry the marker too). `probe`: kill nothing. Both print the container's cgroup counters as one JSON
line. Where the host sees the container's cgroup and may signal its processes, the sandbox calls the same
functions from the host instead (faster, and not starved by the container's CPU quota).
"""
import json
import os
import sys

MARKER = "CWM_EXEC"
IN_CONTAINER = {"pids": ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"],        # cgroup v1, then v2
                "memory": ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]}


def _field(text, name):
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value)
    return 0


def _read(path):
    with open(path) as f:
        return f.read()


def read_counters(dirs):
    """{"pids": tasks now, "pids_max": forks refused at the pids limit, "oom": OOM kills} or None."""
    got = {}
    for d in dirs.get("pids", ()):
        try:
            got["pids"] = int(_read(d + "/pids.current"))
            got["pids_max"] = _field(_read(d + "/pids.events"), "max")
            break
        except (OSError, ValueError):
            continue
    for d in dirs.get("memory", ()):
        for name, field in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
            try:
                got["oom"] = _field(_read(d + "/" + name), field)
                break
            except (OSError, ValueError):
                continue
        if "oom" in got:
            break
    return got if len(got) == 3 else None


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _marked(token, pids, skip):
    """(pid, state) of every live process of one execution, and of every process without a marker."""
    mine = (MARKER + "=" + token).encode()
    key = (MARKER + "=").encode()
    found = []
    for pid in pids():
        if pid in skip:
            continue
        try:
            stat = _read("/proc/%d/stat" % pid)
            if stat.split(" (", 1)[1].startswith("runc:"):
                continue                           # the runtime starting another exec, not yet its command
            state = stat.rsplit(")", 1)[1].split()[0]
            with open("/proc/%d/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
        except (OSError, IndexError):
            continue
        mark = [e for e in env if e.startswith(key)]
        if state != "Z" and (not mark or mark[0] == mine):   # zombies are dead already
            found.append((pid, state))
    return found


def _signal(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_marked(token, pids=all_pids, skip=(), rounds=1000):
    """Stop, then SIGKILL, the processes of one execution; True once none is left.

    `pids` lists the candidates (inside the container: all of /proc; on the host: the container's
    cgroup.procs), `skip` the init and the caller. Stopping first wins against a fork bomb: a stopped
    process forks no more, so the set only shrinks."""
    skip = set(skip) | {os.getpid()}
    for _ in range(rounds):
        running = [pid for pid, state in _marked(token, pids, skip) if state not in "Tt"]
        if not running:
            break
        _signal(running, 19)                       # SIGSTOP
    for _ in range(rounds):
        left = [pid for pid, _state in _marked(token, pids, skip)]
        if not left:
            return True
        _signal(left, 9)
    return False


if __name__ == "__main__":
    ok = kill_marked(sys.argv[2], skip={1}) if sys.argv[1] == "kill" else True
    print(json.dumps(read_counters(IN_CONTAINER)))
    sys.exit(0 if ok else 1)
