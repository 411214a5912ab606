"""Episodes are independent: after `reset()`, an env's sandbox holds nothing an earlier episode left there
(files, processes, shared memory, SysV IPC), whichever env and backend."""
from __future__ import annotations

import json

import gymnasium
import pytest

import cwm_envs  # noqa: F401  (registers the ids)

# What a policy's code leaves behind in one episode: files in every writable place, a POSIX shared-memory
# file, SysV shared memory, semaphore and message queue, and a daemon that left its session.
LEAVE = r'''
import ctypes, os, time
for d in (".", "/tmp", "/dev/shm", os.path.expanduser("~"), "/var/tmp"):
    try:
        open(os.path.join(d, "cwm-note"), "w").write("the answer is 42")
    except OSError:
        pass
libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT = 0o1000
libc.shmget(0x5eed, 4096, IPC_CREAT | 0o666)
libc.semget(0x5eed, 1, IPC_CREAT | 0o666)
libc.msgget(0x5eed, IPC_CREAT | 0o666)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open("/tmp/cwm-daemon-pid", "w").write(str(os.getpid()))
        time.sleep(300)
    os._exit(0)
time.sleep(0.2)
print("left")
'''

# What the next episode looks for (as the sandbox's user would see it).
LOOK = r'''
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
found = {"files": [], "ipc": [], "processes": []}
for d in (".", "/tmp", "/dev/shm", os.path.expanduser("~"), "/var/tmp"):
    try:
        found["files"] += [os.path.join(d, n) for n in os.listdir(d) if n.startswith("cwm-")]
    except OSError:
        pass
for name, call, args in (("shm", libc.shmget, (0x5eed, 0, 0)), ("sem", libc.semget, (0x5eed, 0, 0)),
                         ("msg", libc.msgget, (0x5eed, 0))):
    if call(*args) != -1:
        found["ipc"].append(name)
me = os.getpid()
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != me:
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "time.sleep(300)" in cmd or "cwm-daemon" in cmd:
            found["processes"].append(cmd[:80])
print(json.dumps(found))
'''


def _first_episode_leaves(env, env_id: str) -> None:
    env.reset(seed=0)
    if env_id == "cwm/MathTool-v0":
        obs, *_ = env.step(f"<tool: python>\n{LEAVE}</tool>")
        assert "left" in obs
        env.step("</think>\n\\boxed{0}")
    else:                                   # the program the policy wrote runs in the sandbox
        env.step(f"```python\n{LEAVE}\n```")


@pytest.mark.parametrize("backend", ["local", pytest.param("docker", marks=pytest.mark.docker)])
@pytest.mark.parametrize("env_id", ["cwm/MathTool-v0", "cwm/Code-v0", "cwm/OutputPrediction-v0"])
def test_nothing_of_an_episode_reaches_the_next(env_id, backend, request):
    if backend == "docker":
        request.getfixturevalue("docker_engine")
    env = gymnasium.make(env_id, sandbox=backend)
    try:
        if env_id == "cwm/OutputPrediction-v0":  # its answers are values: leave things through the sandbox
            env.reset(seed=0)
            env.unwrapped.sandbox.run_python(LEAVE, timeout=10)
            env.step("```python\n0\n```")
        else:
            _first_episode_leaves(env, env_id)
        env.reset(seed=1)
        res = env.unwrapped.sandbox.run_python(LOOK, timeout=10)
        assert res.ok, res.stderr
        assert json.loads(res.stdout) == {"files": [], "ipc": [], "processes": []}
    finally:
        env.close()


def test_a_shared_sandbox_is_the_callers_to_reset():
    """A Sandbox handed in is shared: the env neither resets nor closes it (documented in TextEnv)."""
    from cwm_envs.sandbox import make_sandbox

    sandbox = make_sandbox("local")
    try:
        env = gymnasium.make("cwm/Code-v0", sandbox=sandbox)
        env.reset(seed=0)
        sandbox.write_file("mine.txt", "kept")
        env.step("```python\nprint(1)\n```")
        env.reset(seed=1)
        env.close()
        assert sandbox.read_file("mine.txt") == b"kept"
        sandbox.reset()
        assert "mine.txt" not in sandbox.list_files()
    finally:
        sandbox.close()
