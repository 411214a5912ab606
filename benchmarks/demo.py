"""`cwm demo`: the whole pipeline on the embedded defaults, one step per capability, in a few minutes on a CPU.

Each step is a section function `fn(args)` that prints what a new user should see and may return a one-line
headline of what it showed (else its docstring's first line stands for it). A step that raises is reported in
one line and the demo goes on; at the end a table lists each step, what it showed, its seconds and where its
output is, and the exit code says whether every step succeeded. Each step's output is also kept in a log file
under `--out` (with the traceback of a failure), and the summary in `--out/report.json` and `report.md`.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT = "runs/demo"


@dataclass(frozen=True)
class Step:
    name: str
    target: str  # "module:function", imported only when the demo runs, so that `cwm --help` stays light
    needs: str = ""  # "docker": an engine must answer, else the step fails with one line saying how to start one


STEPS: list[Step] = [
    Step("sandbox", "benchmarks.sandbox_bench:demo_section"),
    Step("code", "benchmarks.humaneval_bench:demo_section"),
    Step("math", "benchmarks.math_bench:demo_section"),
    Step("trace", "benchmarks.trace_bench:demo_section"),
    Step("model", "benchmarks.train_bench:demo_section"),
    Step("swe", "benchmarks.swe_env_bench:demo_section", needs="docker"),
    Step("rl", "benchmarks.rl.demo:demo_section"),
]


@dataclass
class Outcome:
    step: str
    ok: bool
    shown: str  # the headline, or the one line saying why it failed
    seconds: float
    output: str


class StepFailed(Exception):
    """A step could not do what it shows; the message is the one line the user reads."""


def docker_ready() -> None:
    """Raise StepFailed, in one line with the fix, when no Docker engine answers."""
    from cwm_envs.errors import DockerUnavailable
    from cwm_envs.sandbox.docker_backend import docker_client

    try:
        docker_client()
    except DockerUnavailable as exc:
        cause = exc.__cause__ or exc
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise StepFailed(f"no Docker engine answers at {where} ({type(cause).__name__}); fix: `make demo` as root "
                         "starts dockerd, or start yours (systemctl start docker), then `cwm demo --only swe`") from exc


NEEDS = {"docker": docker_ready}


class _Tee:
    """stdout that also goes to a step's log file; anything else (encoding, fileno, isatty) is the terminal's, as
    libraries read those off sys.stdout (Ray's import does)."""

    def __init__(self, *streams):
        self.streams = streams

    def __getattr__(self, name):
        return getattr(self.streams[0], name)

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception as one short line: a StepFailed's own message, else its type and first line, cut at `limit`."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, StepFailed):
        return text
    line = f"{type(exc).__name__}: {text}".rstrip(": ")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run_step(step: Step, args, log: Path) -> Outcome:
    """Run one step with its stdout also in `log`; a failure becomes one printed line (traceback in the log)."""
    title = ""
    start = time.perf_counter()
    with open(log, "w") as fh, contextlib.redirect_stdout(_Tee(sys.stdout, fh)):
        try:
            module, name = step.target.split(":")
            fn = getattr(importlib.import_module(module), name)
            title = (fn.__doc__ or name).strip().splitlines()[0]
            print(f"\n=== {step.name}: {title} " + "=" * max(0, 66 - len(title) - len(step.name)), flush=True)
            if step.needs:
                NEEDS[step.needs]()
            shown = fn(args) or title
            ok = True
        except Exception as exc:  # noqa: BLE001 - a failed step is reported and the demo goes on
            shown, ok = one_line(exc), False
            fh.write(traceback.format_exc())
            print(f"FAILED ({step.name}): {shown}  [details: {log}]", flush=True)
    seconds = time.perf_counter() - start
    own = log.parent / step.name  # a step that writes files of its own puts them there
    output = f"{own}/" if own.is_dir() else str(log)
    return Outcome(step.name, ok, shown if ok else f"FAILED: {shown}", round(seconds, 1), output)


def summary_table(outcomes: list[Outcome], width: int = 70) -> str:
    """A plain-text table (readable in a terminal and in a CI log alike)."""
    rows = [("step", "what it showed", "seconds", "output")]
    for o in outcomes:
        shown = o.shown if len(o.shown) <= width else o.shown[: width - 3] + "..."
        rows.append((o.step, shown, f"{o.seconds:.1f}", o.output))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]), r[3]]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> str:
    return f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"


def run_demo(args) -> int:
    from benchmarks.report import write_report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = [s for s in STEPS if not args.only or s.name in args.only]
    load_start = machine()
    print(f"cwm demo ({'quick' if args.quick else 'full'}): {len(steps)} steps; each step's log in {out}/; "
          f"machine: {load_start}")
    start = time.perf_counter()
    outcomes = []
    for step in steps:
        outcomes.append(run_step(step, args, out / f"{step.name}.log"))
    total = time.perf_counter() - start
    failed = [o.step for o in outcomes if not o.ok]
    print("\n=== summary " + "=" * 66)
    print(summary_table(outcomes))
    verdict = "every step succeeded" if not failed else f"failed: {', '.join(failed)}"
    print(f"\ndemo finished in {total:.0f} s ({verdict}); machine: {load_start} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    write_report(out, "cwm demo", {"steps": len(outcomes), "failed": failed, "seconds": round(total, 1),
                                   "machine_at_start": load_start, "load_at_end": round(os.getloadavg()[0], 1),
                                   "quick": bool(args.quick)},
                 tables={"steps": [{k: v for k, v in vars(o).items()} for o in outcomes]})
    print(f"summary: {out / 'report.md'}")
    return 1 if failed else 0


def register(sub) -> None:
    parser = sub.add_parser("demo", help="run the whole pipeline on the embedded defaults",
                            description="Run one step per capability on the embedded defaults; end with a table of "
                                        "the steps (exit 1 when one failed).")
    parser.add_argument("--quick", action="store_true", help="smallest budgets (used by the tests)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where the steps' logs and files go (default {DEFAULT_OUT})")
    parser.add_argument("--only", nargs="+", metavar="STEP", choices=[s.name for s in STEPS],
                        help="run only these steps: " + ", ".join(s.name for s in STEPS))
    parser.set_defaults(func=run_demo)
