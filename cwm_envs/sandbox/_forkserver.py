"""The fork-server of the `local` sandbox: runs INSIDE the jail, standard library only.

`cwm_envs.sandbox.local` starts it as `python -I -c <this file's source> CONFIG_JSON` under bubblewrap (the
project itself is not visible in the jail). It imports common modules once, then keeps one forked spare
child ready: it has already dropped to the sandbox's own unprivileged uid (root is exempt from RLIMIT_NPROC)
and waits on a pipe. A request goes to it; it applies the rlimits and runs the code or execs the command.
After answering, the server forks the next spare, off the clock of the next execution. Why each part is here:

- The wall-clock deadline is enforced from this parent side (poll on the child's pidfd and pipes), never
  with signal.alarm in the child.
- After every execution the server sends SIGKILL to every other process of its PID namespace (`kill(-1)`
  from inside a namespace reaches exactly that namespace, bwrap's init excepted), so a child that called
  setsid or daemonised does not outlive the execution. The kernel applies kill(-1) atomically with respect
  to fork, so a fork bomb cannot outrun it.
- stdout and stderr are each capped; past the cap the execution is killed and marked truncated.

Protocol on fd 0 (requests) and fd 1 (replies): a 4-byte big-endian length, a JSON header, then the raw
payloads whose lengths the header names (stdin in a request; stdout and stderr in a reply). Each run request
is acknowledged by one byte before the child is forked. A "leftovers" request is answered at once with what a
wipe of the jail's files would miss (IPC objects, processes), so the host knows whether `reset()` may wipe.
"""
import atexit
import builtins
import gc
import importlib
import json
import linecache
import os
import resource
import select
import signal
import sys
import time
import traceback
import types

if "write_frame" not in globals():  # imported on the host; in the jail `_frames`' source comes first
    from cwm_envs.sandbox._frames import LEN, read_exact, write_frame

_RLIMITS = {  # request field -> (rlimit, scale to the kernel's unit)
    "cpu_s": (resource.RLIMIT_CPU, 1),
    "memory_mb": (resource.RLIMIT_AS, 1 << 20),
    "processes": (resource.RLIMIT_NPROC, 1),
    "file_size_mb": (resource.RLIMIT_FSIZE, 1 << 20),
    "open_files": (resource.RLIMIT_NOFILE, 1),
}


def _kill_all(wait_s=5.0):
    """SIGKILL every process of this PID namespace but init and us, until all are reaped (by init or us)."""
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        try:
            os.kill(-1, signal.SIGKILL)  # zombies still count: ESRCH means all are gone and reaped
        except ProcessLookupError:
            return
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:  # our own children are ours to reap
                pass
        except ChildProcessError:
            pass
        time.sleep(0.0005)


def _others_alive():
    try:
        os.kill(-1, 0)
        return True
    except ProcessLookupError:
        return False


def _count_others():
    return sum(1 for name in os.listdir("/proc") if name.isdigit()) - 2  # minus init and this server


def _leftovers():
    """What a wipe of the jail's files would not remove: IPC objects (SysV, and POSIX queues listed in the
    mqueue mount; -1 when that cannot be read) and processes besides init, us and the waiting spare."""
    ipc = 0
    try:
        for kind in ("shm", "sem", "msg"):
            with open("/proc/sysvipc/" + kind) as f:
                ipc += len(f.readlines()) - 1  # minus the header line
        ipc += len(os.listdir("/dev/mqueue"))
    except OSError:
        ipc = -1
    return {"ipc": ipc, "others": _count_others() - 1, "stdout_len": 0, "stderr_len": 0}


def _exit_status(code):
    """What `sys.exit(code)` would give as the process's exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _run_python(src, workdir):
    """Run `src` as the __main__ module of a fresh interpreter would, then exit like Python does."""
    sys.argv = ["-c"]
    sys.path.insert(0, workdir)
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    status = 0
    try:
        linecache.cache["<sandbox>"] = (len(src), None, src.splitlines(True), "<sandbox>")
        exec(compile(src, "<sandbox>", "exec"), main.__dict__)
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except BaseException as exc:  # the code's own error: print it as Python would, without our frame
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        status = 1
    try:
        threading = sys.modules.get("threading")
        if threading is not None and threading.active_count() > 1:
            threading._shutdown()  # join non-daemon threads, as interpreter exit does
        atexit._run_exitfuncs()
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except BaseException as exc:
        traceback.print_exception(exc)
        status = status or 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status)


def _spare(cfg, ctl_r, out_w, err_w):
    """In a forked spare child: fds and identity now, then wait for the request, limits, the code. Never returns.

    The server forks the spare right after answering the previous request, so the fork and this set-up
    happen while the host is busy elsewhere, not on the next execution's clock."""
    try:
        os.setsid()
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.closerange(3, ctl_r)  # the server's control pipes and everything else but our request pipe
        os.closerange(ctl_r + 1, 1 << 20)
        try:  # the memory cgroup's OOM killer then picks the code's processes, never the server or bwrap
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])  # drops every capability
        os.chdir(cfg["workdir"])
        os.umask(0o022)
        # Copy now (copy-on-write) pages that any run writes anyway, while no one waits for us.
        json.loads(json.dumps({"warm": [1, "x"]}))
        exec(compile("sum(i * i for i in range(64))", "<warm>", "exec"), {})
        raw = read_exact(ctl_r, LEN.size)
        if raw is None:  # the server is done with us
            os._exit(0)
        req = json.loads(read_exact(ctl_r, LEN.unpack(raw)[0]))
        stdin = read_exact(ctl_r, req["stdin_len"]) if req["stdin_len"] >= 0 else None
        os.close(ctl_r)
        if stdin:
            fd = os.memfd_create("stdin")
            os.write(fd, stdin)
            os.lseek(fd, 0, os.SEEK_SET)
            os.dup2(fd, 0)
            os.close(fd)
        limits = req["limits"]
        for field, (res, scale) in _RLIMITS.items():
            value = limits.get(field)
            if value is not None:
                soft = int(value * scale)
                hard = soft + 1 if field == "cpu_s" else soft  # SIGXCPU at soft, SIGKILL one second later
                cap = resource.getrlimit(res)[1]
                if cap != resource.RLIM_INFINITY:  # an unprivileged process can only lower its limits
                    soft, hard = min(soft, cap), min(hard, cap)
                resource.setrlimit(res, (soft, hard))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        argv = req.get("argv")
        if argv:
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):  # Python's dispositions, not exec's
                signal.signal(sig, signal.SIG_DFL)
            try:
                os.execvpe(argv[0], argv, cfg["env"])
            except OSError as exc:
                os.write(2, f"sandbox: cannot run {argv[0]!r}: {exc.strerror}\n".encode())
                os._exit(127)
        _run_python(req["code"], cfg["workdir"])
    except BaseException as exc:
        try:
            os.write(2, f"sandbox: setup failed: {exc!r}\n".encode())
        finally:
            os._exit(126)
    os._exit(126)


class Spare:
    """A forked child waiting for its request on a pipe, with its output pipes and a pidfd."""

    def __init__(self, cfg):
        ctl_r, self.ctl_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            _spare(cfg, ctl_r, out_w, err_w)
        for fd in (ctl_r, out_w, err_w):
            os.close(fd)
        self.pidfd = os.pidfd_open(self.pid)

        self.reaped = False

    def close_request(self):
        if self.ctl_w >= 0:
            os.close(self.ctl_w)
            self.ctl_w = -1

    def discard(self):
        """Close our ends; kill and reap the child unless its execution already reaped it."""
        self.close_request()
        for name in ("out_r", "err_r", "pidfd"):
            os.close(getattr(self, name))
        if not self.reaped:
            self.reaped = True
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _classify(limits, status, cpu_used, err_tail, others):
    """Name the limit that ended an execution, from the signal, CPU use and the error Python printed."""
    nproc = limits.get("processes")
    if nproc is not None and others >= max(1, (nproc * 3) // 4):
        return "processes"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        cpu = limits.get("cpu_s")
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu is not None and cpu_used >= cpu - 0.05):
            return "cpu"
        if sig == signal.SIGXFSZ:
            return "file_size"
        return None
    lines = err_tail.strip().splitlines()
    last = lines[-1] if lines else b""
    if last.startswith(b"MemoryError"):
        return "memory"
    if b"[Errno 27]" in last:  # EFBIG: RLIMIT_FSIZE (Python ignores SIGXFSZ and raises instead)
        return "file_size"
    if b"[Errno 24]" in last:  # EMFILE: RLIMIT_NOFILE
        return "open_files"
    if last.startswith(b"BlockingIOError: [Errno 11]") or b"can't start new thread" in last:
        return "processes"
    return None


def _execute(cfg, spare, req, stdin):
    limits = req["limits"]
    cap = limits["output_bytes"]
    head = json.dumps(req).encode()
    message = b"".join([LEN.pack(len(head)), head, stdin or b""])
    view = memoryview(message)
    while view:
        view = view[os.write(spare.ctl_w, view):]  # raises BrokenPipeError if the spare died meanwhile
    spare.close_request()
    start = time.monotonic()
    pid, pidfd, out_r, err_r = spare.pid, spare.pidfd, spare.out_r, spare.err_r
    bufs = {out_r: bytearray(), err_r: bytearray()}
    err_tail = bytearray()
    truncated = output_hit = timed_out = False
    poller = select.poll()
    for fd in (out_r, err_r, pidfd, 0):
        poller.register(fd, select.POLLIN)
    open_pipes = {out_r, err_r}

    def take(fd, chunk):
        nonlocal truncated, err_tail
        if fd == err_r:
            err_tail = (err_tail + chunk)[-4096:]
        room = cap - len(bufs[fd])
        bufs[fd] += chunk[:max(room, 0)]
        if len(chunk) > room:
            truncated = True

    deadline = start + req["timeout"]
    exited = False
    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        for fd, _ev in poller.poll(remaining * 1000):
            if fd == pidfd:
                exited = True
            elif fd == 0:  # the host closed the control pipe: it is gone, so go with it
                _kill_all()
                os._exit(0)
            else:
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    take(fd, chunk)
                else:
                    poller.unregister(fd)
                    open_pipes.discard(fd)
        if truncated:
            output_hit = True
            break
    others = 0
    if timed_out or output_hit:
        others = _count_others() - 1  # minus the main child, which is still there
        os.kill(-1, signal.SIGKILL)  # the main child and everything it started
    _, status, usage = os.wait4(pid, 0)
    spare.reaped = True
    duration = time.monotonic() - start
    if _others_alive():  # processes left behind (daemons, a fork bomb): count them, then end them
        others = max(others, _count_others())
        _kill_all()
    for fd in list(open_pipes):  # every writer is dead now: read what is left up to EOF
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            take(fd, chunk)
    cpu_used = usage.ru_utime + usage.ru_stime
    if output_hit:
        limit = "output"
    else:
        limit = _classify(limits, status, cpu_used, bytes(err_tail), others)
    if timed_out or output_hit:
        exit_code = None
    elif os.WIFSIGNALED(status):
        exit_code = -os.WTERMSIG(status)
    else:
        exit_code = os.WEXITSTATUS(status)
    header = {"exit_code": exit_code, "timed_out": timed_out, "limit_hit": limit, "truncated": truncated,
              "duration_s": duration, "cpu_s": cpu_used,
              "stdout_len": len(bufs[out_r]), "stderr_len": len(bufs[err_r])}
    return header, bytes(bufs[out_r]), bytes(bufs[err_r])


def main(cfg):
    if sys.flags.no_site:  # started with -S: the builtins `site` adds (exit, quit, help...) but no site-packages
        import site
        site.setquit()
        site.setcopyright()
        site.sethelper()
    for name in cfg["preload"]:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.collect()
    gc.freeze()  # children then do not touch (copy) the pages of these objects when they collect
    devnull = os.open("/dev/null", os.O_WRONLY)
    write_frame({"ready": True, "version": sys.version.split()[0]})
    os.dup2(devnull, 2)  # nothing of ours writes there; keep stray messages off the host's log
    spare = None
    while True:
        if spare is None:  # fork the next child now, off the clock of the next execution
            spare = Spare(cfg)
        raw = read_exact(0, LEN.size)
        if raw is None:
            break
        req = json.loads(read_exact(0, LEN.unpack(raw)[0]))
        if req.get("op") == "exit":
            break
        if req.get("op") == "leftovers":  # asked between runs, when nothing of the code runs any more
            write_frame(_leftovers())
            continue
        stdin = read_exact(0, req["stdin_len"]) if req.get("stdin_len", -1) >= 0 else None
        os.write(1, b"\x06")  # received: a host that sees no ack knows the code never started
        try:
            try:
                reply = _execute(cfg, spare, req, stdin)
            except BrokenPipeError:  # the spare died while it waited: run on a fresh one
                spare.discard()
                spare = Spare(cfg)
                reply = _execute(cfg, spare, req, stdin)
        except Exception as exc:  # a fault of the machinery (fork failed...): tell the host, stay up
            _kill_all()
            reply = ({"error": f"{type(exc).__name__}: {exc}", "stdout_len": 0, "stderr_len": 0},)
        spare.discard()
        spare = None
        write_frame(*reply)
    _kill_all()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
