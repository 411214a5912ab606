"""The `docker` sandbox: one container per episode, commands through `docker exec`, a warm pool for reset().

Why these choices:
- Commands run as an unprivileged user (SANDBOX_USER) unless a caller asks for root (`user=ROOT`, as SWE
  repositories do). The root filesystem is read-only; the writable areas (workdir, /tmp, /var/tmp, /dev/shm,
  the user's home) are tmpfs mounts capped in bytes and inodes. On this engine (overlay2 on ext4) Docker cannot
  cap a container's writable layer (`--storage-opt size` needs xfs with project quotas), and a tmpfs cap is the
  kernel's own: a full area gives ENOSPC, never a full host disk. Their contents count toward the memory limit.
  A caller that needs a writable image layer (SWE: `pip install -e .` into the image's venv) passes
  `read_only_root=False`; the layer is then watched from this host (`LayerGuard`) and a command that grows it
  past the cap is killed.
- PID 1 is our own reaper (`_docker_tool.INIT`): a pid namespace's init gets no signal from inside it, so no
  command, root included, can end the container (Docker's init exits with its child, which root may kill).
- Trusted programs in the container (PID 1, the exec server, the helper, file reads and writes) and
  `run_python` start with the interpreter's absolute path, read from PID 1 before any command ran, and `-I`
  (`-I -S` for ours): nothing a command writes (a module in the workdir, a user site, a PATH shim,
  PYTHON* variables) changes what they import. With a read-only root nothing on their path is writable.
- Commands go through an exec server in the container (`_docker_tool.py serve`, started by one long-lived
  `docker exec` as root when the container starts): a command is then a fork, a switch to the sandbox's user
  and an exec, not a new `docker exec`, on which the engine alone spends ~50 ms. The server applies the marker,
  user, workdir, rlimits, deadline and output cap itself, and sends a heartbeat while a command runs: a server
  that a command stopped or killed (root may) is noticed within a second or two, the run comes back marked
  (`exit_code=None`, a note in stderr) and the next run starts a new server. A run that finds the server busy
  (another thread) or gone takes the classic path, one `docker exec` per command.
- Each execution carries its own marker (`CWM_EXEC=<token>`): after a timeout, and after a run that left
  processes behind, every process with that marker (or none) is SIGKILLed, setsid children included
  (`_docker_box.py`; with `background=True` a run's leftovers live on, an agent's server, say). Limits are
  read back from the container's cgroup counters, the reliable witness of forks refused and OOM kills.
- Every container is labelled with its owner's pid; those of dead owners are reaped at the next start, and a
  process's own go at exit, on SIGTERM and on `close()` (`_docker_reaper.py`).
- `reset()` takes a pre-started container from a pool that a background thread refills, and removes the
  old one in that thread, so a new episode starts in well under a millisecond instead of ~0.5 s. A new
  container has its own filesystem, processes and IPC namespace: nothing of an earlier episode is visible.
"""
from __future__ import annotations

import base64
import dataclasses
import os
import threading
import time
import uuid
from pathlib import PurePosixPath

from cwm_envs.errors import SandboxError, UsageError
from cwm_envs.sandbox import _docker_reaper as reaper, _docker_tool
from cwm_envs.sandbox._docker_box import Box, LayerGuard, classify
from cwm_envs.sandbox._docker_exec import ISOLATED, MARKER, ExecServer, ServerGone, drain, pump
from cwm_envs.sandbox._docker_reaper import (
    HOST_LABEL,
    LABEL,
    PID_LABEL,
    START_LABEL,
    docker_client,
    gc_stale,
    owner_labels,
)
from cwm_envs.sandbox.base import ExecResult, Limits, Sandbox
from cwm_envs.sandbox.images import WORKDIR, ensure_base_image

DEFAULT_LIMITS = Limits(memory_mb=1024, processes=256, output_bytes=1 << 20)
SERVER_GRACE_S = 30.0  # how long past a run's timeout the host waits for the server's reply
SANDBOX_USER = "10001:10001"   # the default user of commands: a uid that no image or host account is likely to use
ROOT = "0:0"                   # user=ROOT: commands as root, for callers that need it (SWE repositories)
SANDBOX_HOME = "/home/sandbox"  # HOME of a non-root user (a capped tmpfs)
DISK_MB, DISK_INODES = 256, 32768  # default cap of each large writable area (workdir, /tmp, a writable layer)
# How SWE repositories run: as root (installs, any file of the repo and its venv), on a writable image layer
# (eval scripts `pip install -e .` into the venv) capped from this host, with room for builds and test caches.
REPO_SANDBOX = {"user": ROOT, "read_only_root": False, "disk_mb": 2048, "disk_inodes": 262144}


class DockerSandbox(Sandbox):
    """Commands and code in a Docker container: one container per episode, a warm pool behind `reset()`.

    Arguments:
        image: any image with python3 (pulled when missing); default `$CWM_BASE_IMAGE` or the offline
            `cwm-envs/base:bookworm`, built on first use.
        limits: defaults for every run; memory (MB, no swap) and processes are the container's cgroup
            limits, `cpu_s`, `file_size_mb` and `open_files` become rlimits of each run (via `prlimit`),
            `output_bytes` caps stdout and stderr each.
        pool_size: pre-started containers kept ready for `reset()` (0: reset creates one, ~0.5 s).
        network: False (default) gives the container no network interface but loopback.
        cpus: CPU share of the container (1.0 = one core).
        workdir: where commands run and relative file paths point.
        user: "UID[:GID]" that commands run as; default SANDBOX_USER (unprivileged: it may write only the
            capped areas, read no root-only file, signal none of the sandbox's own processes). `ROOT` ("0:0")
            only where a caller needs it (SWE repositories: installs, any file of the image).
        read_only_root: True (default): the image is read-only, the workdir, /tmp, /var/tmp, /dev/shm and the
            home are empty tmpfs mounts (an image's files in the workdir are not seen). False keeps the
            image's layer writable (and its workdir's files, given to a non-root user), with /tmp, /var/tmp,
            /dev/shm and a non-root user's home still tmpfs; the layer is watched from this host
            (`LayerGuard`): a run that takes it past the cap is killed and the container replaced.
        disk_mb, disk_inodes: cap of the workdir, /tmp and a writable layer each (the smaller areas get an
            eighth). A full area fails writes with ENOSPC and the run reports limit_hit="disk". tmpfs
            contents count toward the memory limit.
        background: keep processes a run leaves behind (default False: they are killed when it returns).
        exec_server: run commands through the container's exec server (default); False: one `docker exec`
            per command (~50 ms more each).
        shell: how a string command runs (`bash -c` by default).
        env: extra environment variables for every command.

    `run_shell(cmd)` (or `run(str)`) runs a shell command, `exec(argv)` (or `run(list)`) a program,
    `run_python(code)` Python code (the image's python3 by its absolute path, isolated with `-I`); each also
    takes `workdir` and `env`. Outcomes (timeout, limit hit, truncated output) come back in the
    ExecResult (`exit_code` is None after a timeout, the output limit, or a command that killed or stopped the
    exec server running it; 128+N after signal N); only a fault of Docker itself raises SandboxError
    (DockerUnavailable when no engine answers); a container found dead is replaced for the next run. A job
    left running in the background that still holds the command's stdout delays its return by a 2 s grace, as
    Docker's stream does: redirect it (`cmd > log 2>&1 &`).
    Close the sandbox (or use `with`); one never closed is removed when the process exits.
    """

    name = "docker"

    def __init__(self, image: str | None = None, *, limits: Limits | None = None, pool_size: int = 1,
                 network: bool = False, cpus: float = 1.0, workdir: str = WORKDIR, user: str = SANDBOX_USER,
                 read_only_root: bool = True, disk_mb: int = DISK_MB, disk_inodes: int = DISK_INODES,
                 background: bool = False, shell: tuple[str, ...] = ("bash", "-c"),
                 env: dict[str, str] | None = None, exec_server: bool = True, client=None):
        if pool_size < 0 or cpus <= 0:
            raise UsageError("pool_size must be >= 0 and cpus > 0")
        if user is None or not all(part.isdigit() for part in str(user).split(":", 1)):
            raise UsageError(f"user must be 'UID' or 'UID:GID' (numbers; ROOT for root), got {user!r}")
        if disk_mb < 8 or disk_inodes < 64:
            raise UsageError("disk_mb must be >= 8 and disk_inodes >= 64")
        if not PurePosixPath(workdir).is_absolute():
            raise UsageError(f"workdir must be an absolute path, got {workdir!r}")
        self._closed = True                  # until a container exists, close() has nothing to do
        self.client = client or docker_client()
        self.image = ensure_base_image(image, client=self.client)
        self.limits = DEFAULT_LIMITS.merged(limits)
        self.pool_size, self.network, self.cpus, self.background = pool_size, network, cpus, background
        self.workdir, self.shell, self.env = workdir, tuple(shell), dict(env or {})
        self.use_exec_server = exec_server
        self._ids = tuple(int(x) for x in (str(user).split(":") * 2)[:2])
        self.user = f"{self._ids[0]}:{self._ids[1]}"
        self.read_only_root, self.disk_mb, self.disk_inodes = read_only_root, disk_mb, disk_inodes
        # a uid without an /etc/passwd entry: tell programs who and where it is
        self._home = {"HOME": SANDBOX_HOME, "USER": "sandbox", "LOGNAME": "sandbox"} if self._ids[0] else {}
        self._cv = threading.Condition(threading.RLock())
        self._pool: list[Box] = []
        self._retire: list[Box] = []
        self._pool_error: BaseException | None = None
        reaper.install_process_hooks(self.client)
        reaper.live.add(self)
        self._closed = False
        self._box: Box | None = None
        try:
            self._box = self._create()
        except BaseException:
            self.close()
            raise
        self._worker = threading.Thread(target=self._pool_loop, name="cwm-docker-pool", daemon=True)
        self._worker.start()

    # -- containers ------------------------------------------------------------------------------------
    def _tmpfs(self) -> dict[str, str]:
        """The capped tmpfs mounts: path -> mount options. Their contents are memory the container's cgroup
        pays for and cannot reclaim (no swap): all of them together stay under 3/5 of the memory limit, so
        filling them makes writes fail, not the OOM killer take the container's init or exec server."""
        uid, gid = self._ids
        mb = min(self.disk_mb, self.limits.memory_mb // 4) if self.limits.memory_mb else self.disk_mb
        big = f"size={max(1, mb)}m,nr_inodes={self.disk_inodes},exec"
        small = f"size={max(1, mb // 8)}m,nr_inodes={max(64, self.disk_inodes // 8)},exec"
        mounts = {"/tmp": big + ",mode=1777", "/var/tmp": small + ",mode=1777", "/dev/shm": small + ",mode=1777"}
        if self.read_only_root:
            mounts[self.workdir] = big + f",mode=0755,uid={uid},gid={gid}"
        if uid or self.read_only_root:       # root's home stays the image's where the image is writable
            mounts.setdefault(SANDBOX_HOME if uid else "/root", small + f",mode=0700,uid={uid},gid={gid}")
        return mounts

    def _ipc_sysctls(self) -> dict[str, str]:
        """Caps of the container's own IPC namespace: SysV shared memory outlives its processes and is memory
        the cgroup pays for, so at most a quarter of the memory limit; few message queues."""
        sysctls = {"kernel.msgmni": "64"}
        if self.limits.memory_mb:
            shm = (self.limits.memory_mb // 4) << 20
            sysctls.update({"kernel.shmmax": str(shm), "kernel.shmall": str(shm // 4096)})
        return sysctls

    def _create(self) -> Box:
        import docker.errors
        from docker.types import LogConfig, Ulimit

        lim = self.limits
        uid, gid = self._ids
        init = [*ISOLATED, "-c", _docker_tool.INIT]
        if not self.read_only_root and uid:  # hand the image's workdir to the user
            init += [self.workdir, str(uid), str(gid)]
        tmpfs = self._tmpfs()
        kwargs = dict(
            entrypoint=["python3", *init], detach=True, labels=owner_labels(),
            network_mode="bridge" if self.network else "none", working_dir=self.workdir,
            environment={**self.env, MARKER: "keep"}, nano_cpus=int(self.cpus * 1e9),
            security_opt=["no-new-privileges"], hostname="sandbox", ipc_mode="private",
            read_only=self.read_only_root, tmpfs=tmpfs, sysctls=self._ipc_sysctls(),
            log_config=LogConfig(type="json-file", config={"max-size": "64k", "max-file": "1"}),
            ulimits=[Ulimit(name="core", soft=0, hard=0)],   # no core files in the capped areas
        )
        if lim.memory_mb:
            kwargs.update(mem_limit=f"{lim.memory_mb}m", memswap_limit=f"{lim.memory_mb}m")
        if lim.processes:
            kwargs["pids_limit"] = lim.processes
        try:
            container = self.client.containers.create(self.image, **kwargs)
        except docker.errors.DockerException as exc:
            raise SandboxError(f"cannot create a container from {self.image}: {exc}") from exc
        try:
            container.start()
            python = self._init_python(container)
            box = Box(container, (lim.memory_mb, lim.processes), python, self._ids, sorted(tmpfs))
            if not self.read_only_root:
                LayerGuard.watch(box, self.disk_mb << 20, self.disk_inodes)
            if self.use_exec_server:
                box.exec_server()            # now, off the clock of the first run
            return box
        except BaseException as exc:
            reaper.remove_quietly(container)
            if isinstance(exc, docker.errors.DockerException):
                raise SandboxError(f"cannot start a container from {self.image}: {exc}") from exc
            raise

    def _init_python(self, container, wait_s: float = 60.0) -> str:
        """The real path of the image's python3, as PID 1 printed it before any command could run."""
        deadline = time.monotonic() + wait_s
        while True:
            line = container.logs(stdout=True, stderr=False).decode("utf-8", "replace").strip()
            if line.startswith("/"):
                return line.splitlines()[0]
            container.reload()
            if container.status != "running" or time.monotonic() > deadline:
                tail = container.logs().decode("utf-8", "replace").strip()[-300:]
                raise SandboxError(f"{self.image} has no working python3 to start the sandbox ({tail or container.status})")
            time.sleep(0.005)

    def _pool_loop(self) -> None:
        """Keep `pool_size` fresh containers ready; remove retired ones when there is nothing to fill."""
        failures = 0
        while True:
            with self._cv:
                while not self._closed and len(self._pool) >= self.pool_size and not self._retire:
                    self._cv.wait()
                if self._closed:
                    return
                victim = None if len(self._pool) < self.pool_size else self._retire.pop()
            if victim is not None:
                victim.remove()
                continue
            try:
                fresh = self._create()
            except Exception as exc:         # engine trouble: report it to reset(), back off, try again
                failures += 1
                with self._cv:
                    self._pool_error = exc
                    self._cv.notify_all()
                    self._cv.wait(min(30.0, 0.5 * 2 ** failures))
                continue
            failures = 0
            with self._cv:
                if self._closed:
                    fresh.remove()
                    return
                self._pool.append(fresh)
                self._pool_error = None
                self._cv.notify_all()

    def reset(self, timeout: float = 120.0) -> None:
        """Swap in a pristine container from the warm pool; the used one is removed in the background."""
        self._check_open()
        if self.pool_size == 0:
            fresh = self._create()
        else:
            with self._cv:
                begin = time.monotonic()
                while not self._pool and not self._closed:
                    waited = time.monotonic() - begin
                    if self._pool_error is not None and waited > 5:
                        raise SandboxError(f"the warm pool cannot start containers: {self._pool_error}")
                    if waited > timeout:
                        raise SandboxError(f"no pooled container became ready within {timeout:.0f} s")
                    self._cv.wait(0.25)
                self._check_open()
                fresh = self._pool.pop(0)
        with self._cv:
            self._box, old = fresh, self._box
            self._retire.append(old)
            self._cv.notify_all()

    @property
    def container_id(self) -> str:
        self._check_open()
        return self._box.container.id

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this docker sandbox is closed")

    def close(self) -> None:
        """Remove the current, pooled and retired containers; safe to call twice (and from atexit)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
            doomed = [b for b in (self._box, *self._pool, *self._retire) if b is not None]
            self._pool, self._retire, self._box = [], [], None
        worker = getattr(self, "_worker", None)
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=60)          # it removes what it was creating when it sees `closed`
        threads = [threading.Thread(target=b.remove) for b in doomed]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        reaper.live.discard(self)

    # -- execution -------------------------------------------------------------------------------------
    def run(self, code_or_cmd: str | list[str], stdin: str | bytes | None = None, timeout: float = 10.0,
            limits: Limits | None = None, *, python: bool = False, workdir: str | None = None,
            env: dict[str, str] | None = None) -> ExecResult:
        """Run a shell command (str), an argv (list) or, with `python=True`, Python code; never raises for
        what the command does, only when Docker itself fails."""
        self._check_open()
        box = self._box
        if python:
            if not isinstance(code_or_cmd, str):
                raise UsageError("python=True takes the code as a string")
            argv = [box.python, "-I", "-c", code_or_cmd]
        elif isinstance(code_or_cmd, str):
            argv = [*self.shell, code_or_cmd]
        elif isinstance(code_or_cmd, (list, tuple)) and code_or_cmd and all(isinstance(a, str) for a in code_or_cmd):
            argv = list(code_or_cmd)
        else:
            raise UsageError(f"run() takes a shell command (str) or an argv (non-empty list of str), "
                             f"got {code_or_cmd!r:.80}")
        if not timeout or timeout <= 0:
            raise UsageError(f"timeout must be positive, got {timeout!r}")
        lim = self.limits.merged(limits)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        env = {**self._home, **self.env, **(env or {})}
        try:
            self._apply_limits(box, lim)
            token = uuid.uuid4().hex
            server = box.exec_server() if self.use_exec_server else None
            sweep = box.host_kill and not self.background
            before = set(box.cgroup_pids()) if sweep else None
            box.disk_hit = False
            box.add_live(token)
            try:
                res = None
                if server is not None and server.lock.acquire(blocking=False):   # busy: another thread's run
                    try:
                        res = self._run_served(box, server, argv, data, timeout, lim, workdir or self.workdir,
                                               env, token)
                    finally:
                        server.lock.release()
                if res is None:
                    res = self._run_exec(box, argv, data, timeout, lim, workdir or self.workdir, env, token)
            finally:
                box.drop_live(token)
            if sweep:
                self._sweep(box, before)
            if LayerGuard.over(box):        # past the cap of the writable layer: a new container
                self._replace(box)
                res = dataclasses.replace(res, limit_hit="disk", stderr=res.stderr + (
                    f"sandbox: the container's writable layer passed its cap ({self.disk_mb} MB or "
                    f"{self.disk_inodes} inodes); the container was replaced and its changes are lost\n"))
        except SandboxError:
            if not box.alive():              # nothing inside can end PID 1: the engine or the host did
                self._replace(box)
            raise
        return res

    def _replace(self, box: Box) -> None:
        """Swap a fresh container in for `box` (dead, or past its disk cap), so the next run works."""
        with self._cv:
            if self._box is not box or self._closed:
                return
        try:
            self.reset()
        except SandboxError:                 # no container to be had now: the next run raises again
            pass

    @staticmethod
    def _sweep(box: Box, before: set[int]) -> None:
        """Kill what appeared in the container during a run unless its marker is that of a run, helper or
        server alive now. The marker is an environment variable: a command may set it to anything (the
        container's own "keep", another run's), so only a marker we know to be live spares a process.
        Processes started meanwhile by other means (a `docker exec` from outside) count as the run's."""
        def new() -> list[int]:
            return [pid for pid in box.cgroup_pids() if pid not in before]

        if new():
            with box.live_lock:
                live = set(box.live)
            with box.kill_lock:
                _docker_tool.kill_marked(None, new, {box.init_pid}, spare=live, everyone=box.cgroup_pids)

    def _run_served(self, box: Box, server: ExecServer, argv: list[str], data: bytes | None, timeout: float,
                    lim: Limits, workdir: str, env: dict[str, str], token: str) -> ExecResult | None:
        """One command through the container's exec server; None when it never started there."""
        before = box.counters()
        request = {"argv": argv, "env": env, "workdir": workdir, "token": token, "timeout": timeout,
                   "limits": {"cpu_s": lim.cpu_s, "file_size_mb": lim.file_size_mb, "open_files": lim.open_files},
                   "cap": lim.output_bytes or DEFAULT_LIMITS.output_bytes, "background": self.background,
                   "counters": before is None, "areas": box.areas}
        start = time.monotonic()
        try:
            head, out, err = server.call(request, data, start + timeout + SERVER_GRACE_S)
        except (ServerGone, TimeoutError) as exc:
            stalled = isinstance(exc, TimeoutError) or exc.stalled
            if stalled:                      # stopped (by a command?) or hung: end it, a new one comes next run
                box.kill_server(server)
            box.drop_server()
            if isinstance(exc, ServerGone) and not exc.started:
                return None
            if not box.alive():
                raise SandboxError(f"container {box.container.short_id} has stopped under a command") from exc
            # The command (root may) killed or stopped the server that ran it: its outcome is lost.
            after = box.kill(token)
            what = "stopped answering" if stalled else "died"
            return ExecResult(stdout="", stderr=f"sandbox: the exec server running this command {what} ({exc}); "
                              "the command's output and exit status are lost\n", exit_code=None,
                              timed_out=isinstance(exc, TimeoutError), duration_s=time.monotonic() - start,
                              limit_hit=classify(None, None, b"", False, before, after, box.disk_hit))
        if "error" in head:                  # it could not start the command (e.g. no pid left to fork)
            return None
        after = box.counters() if before is not None else head["after"]
        before = before or head["before"]
        left = before and after and after["pids"] > before["pids"] and not self.background
        if head["stop"] or head["held"] or left:    # the host (or root helper) kills what the server could not
            after = box.kill(token)
        limit_hit = classify(head["stop"], head["exit_code"], err, head["truncated"], before, after,
                              box.disk_hit or bool(head.get("full")))
        return ExecResult(stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                          exit_code=head["exit_code"], timed_out=head["stop"] == "timeout", limit_hit=limit_hit,
                          duration_s=time.monotonic() - start, truncated=head["truncated"])

    def _run_exec(self, box: Box, argv: list[str], data: bytes | None, timeout: float, lim: Limits, workdir: str,
                  env: dict[str, str], token: str) -> ExecResult:
        """One command as its own `docker exec` (the classic path): rlimits through `prlimit`."""
        rl = []
        if lim.cpu_s:
            cpu = max(1, round(lim.cpu_s))      # SIGXCPU at the soft limit, SIGKILL a second later
            rl.append(f"--cpu={cpu}:{cpu + 1}")
        if lim.file_size_mb:
            rl.append(f"--fsize={int(lim.file_size_mb * 2 ** 20)}")
        if lim.open_files:
            rl.append(f"--nofile={int(lim.open_files)}")
        if rl:
            argv = ["prlimit", *rl, "--", *argv]
        api = self.client.api
        before = box.counters()
        start = time.monotonic()
        try:
            exec_id = api.exec_create(box.container.id, argv, stdin=data is not None, user=self.user,
                                      workdir=workdir, environment={**env, MARKER: token})["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except Exception as exc:
            raise SandboxError(f"docker exec failed in {box.container.short_id}: {exc}") from exc
        after = None
        try:
            out, err, truncated, stop = pump(sock, data, start + timeout, lim.output_bytes or DEFAULT_LIMITS.output_bytes)
            if stop is not None:
                # Keep reading while the helper kills: the engine reports no exit (not even the helper's)
                # while a killed command's output sits unread in its pipe.
                outcome: list = []
                killer = threading.Thread(target=box.kill_into, args=(token, exec_id, outcome))
                killer.start()
                drain(sock, time.monotonic() + 30.0)
                killer.join(timeout=30.0)
                if not outcome or isinstance(outcome[0], BaseException):
                    raise SandboxError(f"could not stop a timed-out command in {box.container.short_id}: "
                                       f"{outcome[0] if outcome else 'the helper did not finish'}")
                after = outcome[0]
        finally:
            sock.close()
        duration = time.monotonic() - start
        code = None if stop else box.exit_code(exec_id)
        if code is None and stop is None:    # it closed its output and lives on: end it
            box.end_exec(exec_id)
        if code == 126 and not box.alive():
            # The runtime could not exec: the container has stopped (nothing inside can end its PID 1).
            raise SandboxError(f"container {box.container.short_id} has stopped: {out.decode(errors='replace').strip()}")
        if stop is None:
            after = box.counters()
            if not self.background and (after is None or after["pids"] > before["pids"]):
                after = box.kill(token)    # processes left behind: a daemon, a fork bomb's children
            elif after is None:
                after = box.probe() if code not in (0, None) else None
        limit_hit = classify(stop, code, err, truncated, before or box.seen, after,
                              box.disk_hit or bool(box.full_areas()))
        if after is not None and before is None:
            box.seen = after
        return ExecResult(stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                          exit_code=code, timed_out=stop == "timeout", limit_hit=limit_hit,
                          duration_s=duration, truncated=truncated)

    def run_python(self, code: str, *, stdin: str | bytes | None = None, timeout: float = 10.0,
                   limits: Limits | None = None, workdir: str | None = None,
                   env: dict[str, str] | None = None) -> ExecResult:
        """Python source, run by the image's python3 (`PYTHON -I -c CODE`, PYTHON its absolute path: no
        module, user site or PYTHON* variable a command left behind changes what it imports)."""
        if not isinstance(code, str):
            raise UsageError("run_python takes the code as a string")
        return self.run(code, stdin, timeout, limits, python=True, workdir=workdir, env=env)

    def run_shell(self, command: str, *, stdin: str | bytes | None = None, timeout: float = 10.0,
                  limits: Limits | None = None, workdir: str | None = None,
                  env: dict[str, str] | None = None) -> ExecResult:
        """A shell command line, run by the sandbox's `shell` (`bash -c` by default)."""
        if not isinstance(command, str):
            raise UsageError(f"run_shell takes the command line as a string, got {command!r:.80}")
        return self.run(command, stdin, timeout, limits, workdir=workdir, env=env)

    def exec(self, argv, *, stdin: str | bytes | None = None, timeout: float = 10.0, limits: Limits | None = None,
             workdir: str | None = None, env: dict[str, str] | None = None) -> ExecResult:
        """A program with its arguments, no shell between."""
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise UsageError(f"exec takes a non-empty list of str, got {argv!r:.80}")
        return self.run(list(argv), stdin, timeout, limits, workdir=workdir, env=env)

    def _apply_limits(self, box: Box, lim: Limits) -> None:
        """Memory and pids limits belong to the container: change them only when a run asks for others."""
        want = (lim.memory_mb, lim.processes)
        if want == box.applied:
            return
        body = {}
        if lim.memory_mb:
            body.update(Memory=lim.memory_mb * 2 ** 20, MemorySwap=lim.memory_mb * 2 ** 20)
        if lim.processes:
            body["PidsLimit"] = lim.processes
        box.update(body)
        box.applied = want

    # -- files -----------------------------------------------------------------------------------------
    def _abs(self, path: str) -> PurePosixPath:
        p = PurePosixPath(path)
        return p if p.is_absolute() else PurePosixPath(self.workdir) / p

    def write_file(self, path: str, content: str | bytes) -> None:
        """Write a file as the sandbox's user (parents created); relative paths are under the workdir. Only the
        writable areas take it: Docker's archive API sees neither a read-only root nor a tmpfs."""
        self._check_open()
        data = content.encode() if isinstance(content, str) else bytes(content)
        target = str(self._abs(path))
        res = self._file_op(_WRITE, target, data)
        if not res.ok:
            raise SandboxError(f"cannot write {target}: {(res.stderr.strip().splitlines() or [res])[-1]}")

    def read_file(self, path: str) -> bytes:
        """The bytes of a file in the container, read as the sandbox's user; FileNotFoundError when there is none."""
        self._check_open()
        target = str(self._abs(path))
        res = self._file_op(_READ, target, None)
        if res.exit_code == 2:
            raise FileNotFoundError(target)
        if res.exit_code == 3:
            raise IsADirectoryError(target)
        if not res.ok:
            raise SandboxError(f"cannot read {target}: {(res.stderr.strip().splitlines() or [res])[-1]}")
        return base64.b64decode(res.stdout)

    def _file_op(self, program: str, target: str, data: bytes | None) -> ExecResult:
        """A file read or write by our own program (`-I -S`, the interpreter's absolute path)."""
        argv = [self._box.python, *ISOLATED, "-c", program, target]
        return self.run(argv, stdin=data, timeout=120, workdir="/", limits=Limits(output_bytes=_FILE_CAP))

    def list_files(self, path: str = ".") -> list[str]:
        """Paths of the files under `path` (recursive, sorted); relative to the workdir when `path` is."""
        target = self._abs(path)
        res = self.run(["find", str(target), "-type", "f", "-printf", "%P\\n"], timeout=60,
                       limits=Limits(output_bytes=64 << 20))
        if res.exit_code != 0:
            raise FileNotFoundError(str(target))
        base = PurePosixPath(path)
        return sorted(os.path.normpath(str(base / name)) for name in res.stdout.splitlines() if name)


_FILE_CAP = 96 << 20        # a file read is base64 on stdout: 64 MiB of file
_WRITE = """import os, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "wb") as f:
    f.write(sys.stdin.buffer.read())
"""
_READ = """import base64, sys
try:
    with open(sys.argv[1], "rb") as f:
        sys.stdout.write(base64.b64encode(f.read()).decode())
except FileNotFoundError:
    sys.exit(2)
except IsADirectoryError:
    sys.exit(3)
"""


__all__ = ["DockerSandbox", "docker_client", "gc_stale", "DEFAULT_LIMITS", "REPO_SANDBOX", "ROOT", "SANDBOX_USER",
           "LABEL", "PID_LABEL", "START_LABEL", "HOST_LABEL"]
