"""Evaluate model patches on SWE-bench instances: apply, run the eval script, grade, report.

Per instance: the instance image (images.py) starts as a `DockerSandbox` with the network off; the patch is
applied like the official harness does (`git apply`, then `--3way`, then `patch --fuzz=5`), but only after
its text passes the rules of patch_rules.py, and the files it really changed pass them again afterwards
(refused: the patch counts as not applied, `refused` says why); test code it touched, and the test patch's
files, are put back at the base commit, and new modules that shadow installed ones are removed. The
dataset's eval script runs unchanged but for the line that records the test command's exit status, with
git's hooks and fsmonitor off (`GIT_ENV`), in two parts: its setup (activation, reinstall, test patch),
then, once the grader has checked what the setup changed, its tests, with the grader's seal plugin loaded
for pytest. The log is graded by SWE-bench's parser and rules plus our guards (grading.py). The same
`grade()` serves `cwm swe eval` and `cwm/SWE-v0`, always in a fresh container of the instance image.

Outcomes, as in the official run summary: `resolved`, `unresolved` (also a patch that does not apply),
`empty_patch` (not run), `error` (infrastructure: image build, timeout, Docker fault, retried once and
never counted as the model's failure). A run is resumable: an instance whose report.json exists for the
same patch is not run again. Files per instance, under OUT/logs/INSTANCE_ID/: patch.diff, eval.sh,
test_output.txt, run_instance.log, report.json.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from cwm_envs.errors import InfraError, SandboxError
from cwm_envs.sandbox.base import Limits
from cwm_envs.swe import patch_rules
from cwm_envs.swe.dataset import SWEInstance
from cwm_envs.swe.grading import Seal, grade_log, seal_applies, split_eval, with_exit_code

APPLY_CMDS = ("git apply --verbose", "git apply --verbose --3way", "patch --batch --fuzz=5 -p1 -i")
PATCH_FILE, EVAL_FILE, SETUP_FILE, MARK = "/tmp/patch.diff", "/eval.sh", "/eval-setup.sh", "/run/cwm-eval.mark"
EVAL_LIMITS = Limits(memory_mb=4096, processes=1024, output_bytes=64 << 20)
DEFAULT_TIMEOUT = 1800.0
# Every git the grader runs (its own and the eval script's): no hooks, no fsmonitor command, whatever the
# repository's config says. GIT_CONFIG_PARAMETERS is how `git -c` hands settings down; every git reads it.
GIT_ENV = {"GIT_CONFIG_PARAMETERS": "'core.hooksPath=/dev/null' 'core.fsmonitor='"}
# The state of the work tree (ignored files included) and of git's own executable settings.
_STATE = ("git status --porcelain=v1 -z --untracked-files=all --ignored=traditional && printf '\\0##\\0' && "
          "cd \"$(git rev-parse --git-dir)\" && find config info hooks -printf '%p %m %s\\n' -type f -exec cat {} + "
          "2>/dev/null | sha256sum")
# Facts from the test environment's own Python (isolated: no file of the repository can answer for it).
_PROBE = r'''
import json, os, pkgutil, sys, sysconfig
root, paths = "/testbed", json.loads(sys.stdin.read())
inside = lambda p: p == root or p.startswith(root + "/")
outside = [p for p in sys.path if p and not inside(p)]
print(json.dumps({
    "dirs": sorted({""} | {os.path.relpath(p, root) for p in sys.path if p.startswith(root + "/")}),
    "modules": sorted({m[1] for m in pkgutil.iter_modules(outside)} | set(sys.builtin_module_names)),
    "links": {p: os.path.realpath(os.path.join(root, p)) for p in paths if os.path.islink(os.path.join(root, p))},
    "purelib": sysconfig.get_paths()["purelib"],
    "libdirs": sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}),
    "commands": sorted({os.path.realpath(p) for p in [sys.executable] + [
        os.path.join(sysconfig.get_paths()["scripts"], n) for n in os.listdir(sysconfig.get_paths()["scripts"])]
        if os.path.isfile(p)})}))
'''
_IN_ENV = ("[ -f /opt/miniconda3/bin/activate ] && . /opt/miniconda3/bin/activate >/dev/null 2>&1 && "
           "conda activate testbed >/dev/null 2>&1; cd / && exec python -I -c \"$0\"")


class EvalTimeout(InfraError):
    """The eval script ran past its timeout (retried once, then reported as an error, never scored)."""


class GradingInfraError(InfraError):
    """The test environment failed while grading (SWE-bench's infra-failure signatures): never scored."""


def _sh(sb, cmd: str, timeout: float = 120.0, stdin: str | None = None):
    return sb.run(cmd, stdin=stdin, timeout=timeout, workdir="/testbed", env=GIT_ENV)


def apply_patch(sb, patch: str) -> tuple[bool, str]:
    """Apply a patch in /testbed like the official harness; returns (applied, log)."""
    sb.write_file(PATCH_FILE, patch if patch.endswith("\n") else patch + "\n")
    log = []
    for attempt, cmd in enumerate(APPLY_CMDS):
        if attempt:     # a failed attempt can leave partial changes: start again from a clean tree
            _sh(sb, "git checkout -q -- . && git clean -fdq")
        res = _sh(sb, f"{cmd} {PATCH_FILE}")
        log.append(f"$ {cmd}\n{res.stdout}{res.stderr}")
        if res.exit_code == 0:
            return True, "\n".join(log)
    res = _sh(sb, f"git apply --check --reverse {PATCH_FILE}")   # the chain may have applied it after all
    if res.exit_code == 0:
        return True, "\n".join(log + ["already applied (git apply --check --reverse)"])
    return False, "\n".join(log)


def tree_state(sb, then: str = "") -> tuple[dict[str, str], str, str]:
    """({path: git status code} for every changed, untracked or ignored file, fingerprint of .git's settings,
    the output of `then`, a command run in the same exec to spare a round trip)."""
    res = _sh(sb, _STATE + (f" && printf '\\0##\\0' && {{ {then}; }}" if then else ""))
    status, sep, rest = res.stdout.partition("\0##\0")
    if res.exit_code != 0 or not sep:
        raise InfraError(f"could not read the state of /testbed: {(res.stdout + res.stderr).strip()[-300:]}")
    fingerprint, _, extra = rest.partition("\0##\0")
    entries, items = {}, iter(status.split("\0"))
    for item in items:
        if len(item) > 3:
            entries[item[3:]] = item[:2]
            if item[0] in "RC":                        # a staged rename or copy: its origin path follows
                entries[next(items, "")] = "D-"
    return entries, fingerprint.strip(), extra


def changed_paths(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Paths whose state differs between two `tree_state` listings (created, changed or deleted)."""
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


def created_paths(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Paths that exist in `after` only: untracked, ignored, or added to the index (`git apply --3way`)."""
    return sorted(p for p in after if p not in before and after[p][0] in "?!ARC")


def probe(sb, paths: list[str]) -> dict:
    """What the test environment's Python says about the changed paths (see _PROBE)."""
    res = sb.run(["bash", "-c", _IN_ENV, _PROBE], stdin=json.dumps(paths), timeout=120, workdir="/")
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        why = (res.stdout + res.stderr).strip()[-300:]
        raise InfraError(f"the test environment's Python did not answer: {why}") from None


def refusals(sb, instance: SWEInstance, changed: list[str], facts: dict, build_products: bool = False) -> list[str]:
    """Why the files changed in /testbed are refused (patch_rules.py), in the container's own terms: after
    the patch is applied, and again after the eval script's setup part (`build_products`: its install may
    write package metadata and bytecode, but no plugin entry point)."""
    scripts = patch_rules.runner_scripts(instance.eval_script)
    found = [f"{p}: {why}" for p in changed if (why := patch_rules.refused_path(p, scripts, build_products))]
    found += [f"{path}: {patch_rules.SYMLINK} to {target}" for path, target in facts["links"].items()]
    for path in changed:
        name = path.rsplit("/", 1)[-1].lower()
        if name in patch_rules.SHARED_CONFIG:
            old = _sh(sb, f"git show {instance.base_commit}:'{_q(path)}' 2>/dev/null")
            new = _sh(sb, f"cat -- '{_q(path)}' 2>/dev/null")
            why = patch_rules.runner_config_change(path, old.stdout if old.exit_code == 0 else None,
                                                   new.stdout if new.exit_code == 0 else None)
            if why:
                found.append(why)
        elif build_products and name == "entry_points.txt":
            why = patch_rules.install_record_problem(path, _sh(sb, f"cat -- '{_q(path)}' 2>/dev/null").stdout)
            if why:
                found.append(why)
    return list(dict.fromkeys(found))


def shadows(created: list[str], facts: dict) -> dict[str, str]:
    """{path: why} for new files that make a module on sys.path hide an installed one (`pytest.py` at the
    root, `_pytest/...`): every new file of such a module, in any folder on sys.path."""
    found = {}
    for folder in facts["dirs"]:
        prefix = "" if folder == "" else folder + "/"
        rels = [p[len(prefix):] for p in created if p.startswith(prefix)]
        for rel in rels:
            why = patch_rules.shadowing(rel, set(facts["modules"]))
            if why:
                top = rel.split("/", 1)[0]
                found.update({prefix + r: why for r in rels if r == rel or r.startswith(top + "/")})
    return found


# What the tests run with: the shell, git, the activation, and the environment's interpreter and scripts.
BASE_COMMANDS = ("/bin/bash", "/usr/bin/bash", "/bin/sh", "/usr/bin/env", "/usr/bin/git",
                 "/opt/miniconda3/bin/activate")


# setuptools' editable finders (imported by their .pth at every start of Python) are named after the project's
# version, which changes when the eval's setup reinstalls a dirty tree (setuptools_scm: `+g<sha>.d<date>`):
# they are compared by content, that name left out, wherever they are.
FINDER = "editable finder "
_FINDER_NAME = r"s/__editable__[._][A-Za-z0-9_.+-]*/__editable__/g"


def commands_state(facts: dict) -> str:
    """A shell command printing a fingerprint of every command the test part runs with (BASE_COMMANDS, the
    environment's python and scripts): the content of small files, inode, size and times of big binaries;
    and one line per editable finder, keyed by its content less its name (FINDER)."""
    paths = " ".join(f"'{_q(p)}'" for p in (*BASE_COMMANDS, *facts["commands"]))
    finders = f"'{_q(facts['purelib'])}'/__editable___*_finder.py"
    return (f"for f in {paths}; do [ -e \"$f\" ] || continue; if [ $(stat -Lc %s \"$f\") -lt 524288 ]; "
            "then sha256sum \"$f\"; else stat -Lc '%i-%s-%Y-%Z  %n' \"$f\"; fi; done; "
            f"for f in {finders}; do [ -f \"$f\" ] || continue; h=$(sed -E \"{_FINDER_NAME}\" \"$f\" | sha256sum | "
            f"cut -d' ' -f1); echo \"$h  {FINDER}$h\"; done")


def environment_changes(sb, found_files: str, commands_before: str, commands_after: str) -> list[str]:
    """What the eval's setup part (its install step runs the patch's setup.py) changed outside the tree that
    would run before or inside the tests: a start-up hook or .pth import in the environment's libraries
    (`found_files`: such files changed since MARK), a pytest plugin entry point, a replaced shell, git,
    python or script. (Its install may rewrite the package's own files and metadata; an installed library's
    code is `library_changes`' to check.)"""
    found = []
    for path in sorted(set(found_files.split())):
        why = patch_rules.install_record_problem(path, sb.run(["cat", "--", path], timeout=30).stdout)
        if why:
            found.append(why)
    if commands_after != commands_before:
        old = dict(ln.split("  ", 1)[::-1] for ln in commands_before.splitlines() if "  " in ln)
        new = dict(ln.split("  ", 1)[::-1] for ln in commands_after.splitlines() if "  " in ln)
        found += [f"{p}: replaced (a command the tests run with)" for p in sorted(old)
                  if not p.startswith(FINDER) and old[p] != new.get(p)]
        found += [f"an {FINDER.strip()} unlike the environment's own (code run at every start of Python)"
                  for p in sorted(new) if p.startswith(FINDER) and p not in old]
    return found


def library_changes(sb, libdirs: list[str], base_commit: str) -> list[str]:
    """Code of the image's installed libraries or standard library (a .py or .so file that was there before)
    that the eval's setup part rewrote, the project's own installed copy aside (`pip install .` rewrites it:
    a file the repository has at its base commit, at the root, under src/ or lib/; never a file the patch
    added), and any file it wrote under /etc. Docker's diff of the container against its image, so no
    fingerprint of thousands of files."""
    api = getattr(getattr(sb, "client", None), "api", None)
    if api is None:                                      # not a Docker sandbox: nothing to compare against
        return []
    try:
        changes = api.diff(sb.container_id) or []
    except Exception as exc:  # noqa: BLE001 - any fault of the engine is the machinery's, not the patch's
        raise SandboxError(f"docker diff failed: {exc}") from exc
    roots = tuple(d.rstrip("/") + "/" for d in libdirs)
    found: dict[str, str] = {}
    # /etc holds what every process or interpreter loads at start (ld.so.preload, Debian's python3.X/
    # sitecustomize.py): no install step writes there. A changed folder is listed too: name the leaves only.
    system = sorted(c.get("Path", "") for c in changes if c.get("Kind") in (0, 1)
                    and c.get("Path", "").startswith("/etc/"))
    refused = [f"{p}: system configuration changed during the setup (loaded at the start of every process)"
               for k, p in enumerate(system) if not (k + 1 < len(system) and system[k + 1].startswith(p + "/"))]
    for change in changes:
        path = change.get("Path", "")
        # the deepest root: a venv's platstdlib (VENV/lib/pythonX.Y) holds its site-packages
        root = max((r for r in roots if path.startswith(r)), key=len, default=None)
        if (change.get("Kind") == 0 and root and path.endswith((".py", ".so")) and "/__pycache__/" not in path
                and "/__editable__" not in path):     # setuptools' finders: commands_state checks them
            found[path[len(root):]] = path
    if not found:
        return refused
    listing = _sh(sb, f"git ls-tree -r -z --name-only {base_commit}")
    if listing.exit_code != 0:
        raise InfraError(f"could not list the base commit's files: {listing.stderr.strip()[-300:]}")
    tree = set(listing.stdout.split("\0"))
    return refused + [f"{found[r]}: an installed library's code changed during the setup" for r in sorted(found)
                      if not any(prefix + r in tree for prefix in ("", "src/", "lib/"))]


def _write_files(sb, files: dict[str, bytes | str]) -> None:
    """Write several files in one exec (a tar on stdin): the eval's test part and the seal's files."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(raw), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(raw))
    res = sb.run(["tar", "-xf", "-", "-C", "/"], stdin=buf.getvalue(), timeout=120, workdir="/")
    if res.exit_code != 0:
        raise InfraError(f"could not write {', '.join(files)}: {res.stderr.strip()[-300:]}")


def _q(path: str) -> str:
    return path.replace("'", "'\\''")


def reset_test_files(sb, instance: SWEInstance, touched: list[str] = ()) -> list[str]:
    """Put test code back at the base commit: the test patch's files and any test file the model patch
    touched (new ones are removed), so the tests that run are the task's. Returns the files the model had
    touched among them."""
    files = list(dict.fromkeys([*instance.test_files, *touched]))
    if not files:
        return []
    quoted = " ".join("'" + _q(f) + "'" for f in files)
    script = (f"changed=$(git status --porcelain --untracked-files=all --ignored -- {quoted} | cut -c4-); "
              f"for f in {quoted}; do if git cat-file -e {instance.base_commit}:\"$f\" 2>/dev/null; "
              f"then git checkout -q {instance.base_commit} -- \"$f\"; else rm -f -- \"$f\"; fi; done; "
              "printf '%s\\n' \"$changed\"")
    res = _sh(sb, script)
    if res.exit_code != 0:
        raise InfraError(f"could not reset the test files: {res.stderr.strip()[-300:]}")
    return sorted({line for line in res.stdout.splitlines() if line.strip()} | set(touched))


def _refused(iid: str, reasons: list[str], apply_log: str = "") -> dict:
    return {iid: {"patch_is_None": False, "patch_exists": True, "patch_successfully_applied": False,
                  "resolved": False, "infra_failure": False, "refused": reasons,
                  "apply_log": (apply_log + "\nrefused:\n" + "\n".join(reasons))[-4000:]}}


def grade(instance: SWEInstance, sandbox, patch: str | None, *, timeout: float = DEFAULT_TIMEOUT,
          log_dir: str | Path | None = None) -> dict:
    """Check and apply `patch` in a fresh sandbox of the instance image, run the eval script, and grade it.

    Returns the official per-instance report ({instance_id: {...}}), with `refused` (why the patch, or what
    its install step did, was not let run at all), `tests_reset` (test files it had touched, put back),
    `removed` (new modules that shadowed installed ones), `seal` and `apply_log` added. Raises EvalTimeout / GradingInfraError / InfraError for machinery faults: never a score.
    The sandbox is left as the eval script left it; use a fresh one per grading.
    """
    iid = instance.instance_id
    log_dir = Path(log_dir) if log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    if patch is None or not patch.strip():
        return grade_log(instance, patch, "/dev/null")
    scripts = patch_rules.runner_scripts(instance.eval_script)
    reasons = patch_rules.patch_violations(patch, scripts)
    if reasons:                                          # before anything touches the tree (`patch` would write .git/)
        return _refused(iid, reasons)
    before, git_before, _ = tree_state(sandbox)
    applied, apply_log = apply_patch(sandbox, patch)
    if log_dir:
        (log_dir / "run_instance.log").write_text(apply_log + "\n")
    if not applied:
        rep = {iid: {"patch_is_None": False, "patch_exists": True, "patch_successfully_applied": False,
                     "resolved": False, "infra_failure": False, "apply_log": apply_log[-4000:]}}
        return rep
    after, git_after, _ = tree_state(sandbox)
    changed = changed_paths(before, after)
    facts = probe(sandbox, changed)
    reasons = refusals(sandbox, instance, changed, facts)
    if git_after != git_before:
        reasons.append(".git: git's own settings, hooks or attributes changed")
    if reasons:
        return _refused(iid, reasons, apply_log)
    touched = reset_test_files(sandbox, instance, [p for p in changed if patch_rules.is_test_path(p)])
    shadowing = {p: why for p, why in shadows(created_paths(before, after), facts).items() if p not in touched}
    if shadowing:                                        # a scratch `code.py` at the root, or a fake `pytest.py`
        _sh(sandbox, "rm -f -- " + " ".join(f"'{_q(p)}'" for p in shadowing))
    script = with_exit_code(instance.eval_script)
    parts = split_eval(script)
    seal = Seal() if seal_applies(instance) and parts else None
    output, res, reasons = _run_eval(sandbox, instance, script, parts, seal, facts, timeout)
    if log_dir:
        (log_dir / "eval.sh").write_text(script)
        out_path = log_dir / "test_output.txt"
        out_path.write_text(output)
    else:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
            fh.write(output)
            out_path = Path(fh.name)
    try:
        if res.timed_out:
            raise EvalTimeout(f"{iid}: the eval script ran past {timeout:.0f} s (an infrastructure fault: "
                              "the gold patch runs in time; not scored)")
        if reasons:                                      # the patch's install step changed what runs
            return _refused(iid, reasons, apply_log)
        rep = grade_log(instance, patch, out_path, seal)
    finally:
        if not log_dir:
            out_path.unlink(missing_ok=True)
    inner = rep[iid]
    if inner.get("infra_failure"):
        raise GradingInfraError(f"{iid}: the test environment failed while grading "
                                f"({inner.get('infra_failure_reason')}); not scored")
    if touched:
        inner["tests_reset"] = touched
    if shadowing:
        inner["removed"] = [f"{p}: {why}" for p, why in shadowing.items()]
    if seal is not None:
        inner["seal"] = "verified" if seal.results is not None else seal.why
    if res.limit_hit:
        inner["limit_hit"] = res.limit_hit
    inner["eval_seconds"] = round(res.duration_s, 2)
    return rep


@dataclass
class _EvalRun:
    """What running the eval script came to (both parts together)."""

    timed_out: bool = False
    limit_hit: str | None = None
    duration_s: float = 0.0


def _run_eval(sb, instance: SWEInstance, script: str, parts: tuple[str, str] | None, seal: Seal | None,
              facts: dict, timeout: float) -> tuple[str, _EvalRun, list[str]]:
    """Run the eval script: its setup part, then (after checking what the setup changed, with every process
    it left gone: the sandbox ends them when a run returns) its test part with the seal plugin loaded.
    Returns (log, outcome, why the setup's changes are refused)."""
    run, outputs, reasons = _EvalRun(), [], []
    deadline = time.monotonic() + timeout

    def part(path: str, text: str | None, env: dict) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:                                    # the setup part and the checks took it all
            run.timed_out = True
            return False
        if text is not None:
            sb.write_file(path, text)
        res = sb.run(f"/bin/bash {path} 2>&1", timeout=left, workdir="/testbed", env=env)
        outputs.append(res.stdout)
        run.timed_out, run.limit_hit = res.timed_out, run.limit_hit or res.limit_hit
        run.duration_s += res.duration_s
        return not res.timed_out

    if parts is None:                                    # no start marker line: run it whole, unchecked
        part(EVAL_FILE, script, GIT_ENV)
    else:
        before, git_before, commands = tree_state(sb, f"mkdir -p /run && touch {MARK} && {commands_state(facts)}")
        if part(SETUP_FILE, parts[0], GIT_ENV):
            reasons = [f"during the eval's setup: {r}"
                       for r in _setup_refusals(sb, instance, facts, before, git_before, commands)]
            env, files = dict(GIT_ENV), {EVAL_FILE: parts[1]}
            if seal is not None:                         # only now: nothing of the setup can read the key
                files.update({f"{facts['purelib']}/{seal.module}.py": seal.plugin_source(), seal.key_path: seal.key})
                env["PYTEST_ADDOPTS"] = f"-p {seal.module}"
            if not reasons:
                _write_files(sb, files)
                part(EVAL_FILE, None, env)
    output = "".join(outputs) + (f"\n\nTimeout error: {timeout:.0f} seconds exceeded." if run.timed_out else "")
    if seal is not None and not run.timed_out and not reasons:
        try:
            seal.read(sb.read_file(seal.out_path))
        except (FileNotFoundError, IsADirectoryError):
            seal.read(None)
    return output, run, reasons


def _setup_refusals(sb, instance: SWEInstance, facts: dict, before: dict[str, str], git_before: str,
                    commands: str) -> list[str]:
    """Why what the eval's setup part changed is refused: the patch rules again on the tree (the test
    patch's own files aside; the install's metadata and bytecode allowed), plus environment_changes."""
    dirs = " ".join(f"'{_q(d)}'" for d in facts["libdirs"])
    # -L: Debian's stdlib `sitecustomize.py` is a link to /etc/python3.X/, whose edit leaves the link's own times
    hooks = (f"find -L {dirs} -cnewer {MARK} ! -type d \\( -name '*.pth' -o -name entry_points.txt -o "
             "-name sitecustomize.py -o -name usercustomize.py \\) -print 2>/dev/null")
    try:
        after, git_after, extra = tree_state(sb, f"{commands_state(facts)}; printf '\\0##\\0'; {hooks}")
        changed = [p for p in changed_paths(before, after) if p not in instance.test_files]
        now = probe(sb, changed) if changed else facts
    except SandboxError:                                 # Docker itself: the machinery's fault
        raise
    except InfraError as exc:                            # git and python answered before the setup: it broke them
        return [f"the test environment no longer works ({exc})"]
    commands_after, _, hook_files = extra.partition("\0##\0")
    found = refusals(sb, instance, changed, now, build_products=True)
    found += [f"{p}: {why}" for p, why in shadows(created_paths(before, after), now).items()
              if p not in instance.test_files]
    if git_after != git_before:
        found.append(".git: git's own settings, hooks or attributes changed")
    return (found + environment_changes(sb, hook_files, commands, commands_after)
            + library_changes(sb, facts["libdirs"], instance.base_commit))
