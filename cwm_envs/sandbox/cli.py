"""`cwm sandbox ...`: run a file in a sandbox (`run`), clean up after dead owners (`gc`: local leftovers, then
the docker backend's containers), make sure the docker backend's base image exists (`image`); `bench` comes
from benchmarks/."""
from __future__ import annotations

import sys
from pathlib import Path

from cwm_envs.cli import group
from cwm_envs.errors import CwmError, UsageError
from cwm_envs.sandbox import BACKENDS, Limits, make_sandbox

SANDBOX_HELP = "run code in an isolated sandbox, benchmark the backends, clean up"


def exit_status(res) -> int:
    """The shell's view of an ExecResult: the code's own status, 128+N for signal N, 124 on timeout."""
    if res.exit_code is None:
        return 124 if res.timed_out else 1
    return 128 - res.exit_code if res.exit_code < 0 else res.exit_code


def status_line(backend: str, res) -> str:
    parts = [f"[sandbox {backend}] exit {res.exit_code}"]
    if res.timed_out:
        parts.append("timed out")
    if res.limit_hit:
        parts.append(f"limit hit: {res.limit_hit}")
    if res.truncated:
        parts.append("output truncated")
    return ", ".join(parts) + f" ({1000 * res.duration_s:.1f} ms)"


def _cmd_run(args) -> int:
    if args.file == "-":
        code = sys.stdin.read()
    else:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"no such file: {args.file}")
        code = path.read_text()
    stdin = None
    if args.stdin is not None:
        if not Path(args.stdin).is_file():
            raise UsageError(f"no such file: {args.stdin}")
        stdin = Path(args.stdin).read_bytes()
    limits = Limits(cpu_s=args.cpu_s, memory_mb=args.memory_mb, processes=args.processes,
                    output_bytes=args.output_bytes)
    with make_sandbox(args.backend) as sb:
        res = sb.run_python(code, stdin=stdin, timeout=args.timeout, limits=limits)
    sys.stdout.write(res.stdout)
    sys.stdout.flush()
    sys.stderr.write(res.stderr)
    if res.stderr and not res.stderr.endswith("\n"):
        sys.stderr.write("\n")
    print(status_line(args.backend, res), file=sys.stderr)
    return exit_status(res)


def _cmd_gc(args) -> int:
    """Local leftovers first (they need no engine), then the docker backend's containers."""
    from cwm_envs.sandbox._docker_reaper import gc_stale as docker_gc_stale
    from cwm_envs.sandbox.local import gc_stale

    removed = gc_stale(args.tmp_root)
    for path in removed:
        print(f"removed {path} (its owner process is gone)")
    print(f"{len(removed)} stale local sandbox leftover(s) removed")
    try:
        containers = docker_gc_stale()
    except CwmError as exc:  # no engine: the local part is done, say why the docker part is not
        print(f"docker containers not checked: {exc}", file=sys.stderr)
        return 2
    for item in containers:
        print(f"removed {item['id']} {item['name']} (owner pid {item['owner_pid']} is gone)")
    print(f"{len(containers)} stale container(s) removed")
    return 0


def _cmd_image(args) -> int:
    from cwm_envs.sandbox._docker_reaper import docker_client
    from cwm_envs.sandbox.images import ensure_base_image

    tag = ensure_base_image(args.base, suite=args.suite, force=args.force,
                            client=docker_client(), log=lambda m: print(m, file=sys.stderr))
    print(tag)
    return 0


def register(sub) -> None:
    sandbox = group(sub, "sandbox", SANDBOX_HELP)
    p = sandbox.add_parser("run", help="run a Python file (or - for stdin) in a sandbox; print its output and "
                                       "a status line; exit with the code's status")
    p.add_argument("file", help="Python file to run, or - to read the code from stdin")
    p.add_argument("--backend", choices=sorted(BACKENDS), default="local", help="sandbox backend (default local)")
    p.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds (default 10)")
    p.add_argument("--memory-mb", type=int, default=None, help="address space / container memory in MB")
    p.add_argument("--cpu-s", type=float, default=None, help="CPU seconds (default: the timeout + 1)")
    p.add_argument("--processes", type=int, default=None, help="most processes and threads at once")
    p.add_argument("--output-bytes", type=int, default=None, help="cap on stdout and on stderr each")
    p.add_argument("--stdin", default=None, metavar="FILE", help="file whose content the code reads on stdin")
    p.set_defaults(func=_cmd_run)

    what = "remove what sandboxes of dead owners left: local temp dirs, tmpfs mounts and cgroups, docker containers"
    p = sandbox.add_parser("gc", help=what, description=what)
    p.add_argument("--tmp-root", default=None, help="where local sandboxes put their temp dirs "
                                                     "(default: the system temp dir)")
    p.set_defaults(func=_cmd_gc)

    p = sandbox.add_parser("image", help="make sure the docker sandbox's base image exists; print its tag")
    p.add_argument("--base", default=None,
                   help="an image with python3 to use instead (pulled when missing); default $CWM_BASE_IMAGE "
                        "or the offline Debian image")
    p.add_argument("--suite", default=None, help="Debian suite of the offline image (bookworm; bullseye has 3.9)")
    p.add_argument("--force", action="store_true", help="rebuild (or re-pull) even when the image exists")
    p.set_defaults(func=_cmd_image)
