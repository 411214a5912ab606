"""CWM's agent tools in a repository container: parse one tool call per turn, run it, format the result.

The facts follow the public CWM release (its SWE-RL tool environment); the wording and the code are ours.

- A turn holds exactly one call, `<tool: NAME>\\nARGUMENT\\n</tool>` (`TOOL_CALL_RE`); more than one call,
  none, unbalanced tags, an empty argument or an unknown tool is a format error, returned as data.
- `bash`: commands run in a session whose working directory and exported variables persist from one call
  to the next (bash's `export -p` and `pwd` are saved at exit and restored at the next call; a call that
  times out restarts the session). stderr is merged into stdout; stdin is empty.
- `edit`: `PATH` then one `<<<<<<< SEARCH` / `=======` / `>>>>>>> REPLACE` block; the search lines must match
  exactly one run of whole consecutive lines. `create`: `PATH` then the content; the path must not exist
  and its parent must. Both run as a small Python script inside the container, so file modes, owners and
  relative paths behave as for the agent's own commands.
- `submit`: the path of a patch file that starts with `diff`; its text is the submission.
- Results come back as `<output>\\nFEEDBACK\\n</output>\\n\\n<budget>\\n* Remaining turns: N\\n* Remaining
  tokens: M\\n</budget>` (`format_result`).

>>> parse_tool_call("Let me look.\\n<tool: bash>\\nls -la\\n</tool>")
ToolCall(name='bash', arg='ls -la')
>>> parse_tool_call("<tool: bash>\\nls\\n</tool>\\n<tool: bash>\\npwd\\n</tool>")
'Expected exactly one tool call, found 2 (bash, bash). Put a single <tool: ...> block in each response.'
>>> print(format_result("hello", 3, 1000))
<output>
hello
</output>
<BLANKLINE>
<budget>
* Remaining turns: 3
* Remaining tokens: 1000
</budget>
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from cwm_envs.sandbox.base import Limits

TOOL_CALL_RE = re.compile(r"<tool:\s([a-zA-Z_]+)>\n(.*?)\n</tool>", re.DOTALL)
TOOLS = ("bash", "edit", "create", "submit")
SESSION_DIR = "/tmp/.cwm_session"          # the bash session's saved state (cwd, exported variables)
DEFAULT_OUTPUT_CHARS = 32_768              # longest tool feedback shown; the middle of longer output is cut
COMMAND_OUTPUT = Limits(output_bytes=1 << 20, file_size_mb=2048)   # no single file may eat the host's disk
PATCH_OUTPUT = Limits(output_bytes=16 << 20)


@dataclass(frozen=True)
class ToolCall:
    """One tool call parsed from the agent's action: the tool's name and its raw argument."""
    name: str
    arg: str


@dataclass(frozen=True)
class ToolResult:
    """What one call did. `patch` is set only by a successful submit; `timed_out` only by bash."""

    output: str
    success: bool
    timed_out: bool = False
    patch: str | None = None


def parse_tool_call(text: str) -> ToolCall | str:
    """The one tool call of a response, or a message that says what is wrong with the format."""
    calls = TOOL_CALL_RE.findall(text)
    if len(calls) > 1:
        names = ", ".join(name for name, _ in calls)
        return (f"Expected exactly one tool call, found {len(calls)} ({names}). "
                "Put a single <tool: ...> block in each response.")
    opening, closing = text.count("<tool:"), text.count("</tool>")
    if opening != len(calls) or closing != len(calls):
        return (f"Malformed tool call: {opening} opening and {closing} closing tag(s), {len(calls)} well-formed "
                "call(s). A call is `<tool: NAME>`, a newline, the argument, a newline, then `</tool>`.")
    if not calls:
        return "No tool call found. Each response must invoke exactly one tool, e.g. <tool: bash>\\nls\\n</tool>."
    name, arg = calls[0]
    if not arg.strip():
        return f"Tool '{name}' needs a non-empty argument."
    if name not in TOOLS:
        return f"Unknown tool '{name}'. The tools are: {', '.join(TOOLS)}."
    return ToolCall(name, arg)


def format_result(feedback: str, remaining_turns: int, remaining_tokens: int) -> str:
    """A tool result with the budget notice, exactly as CWM shows it."""
    return (f"<output>\n{feedback}\n</output>\n\n<budget>\n* Remaining turns: {remaining_turns}\n"
            f"* Remaining tokens: {remaining_tokens}\n</budget>")


def clip(text: str, limit: int = DEFAULT_OUTPUT_CHARS) -> str:
    """`text` if short enough, else its head and tail around a note saying how much was cut."""
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:]}"


# --- prompts (our words; the facts are CWM's) -------------------------------------------------------------

SYSTEM_DESCRIPTION = "You are a helpful AI assistant."
THINK_NOTE = " You always reason before responding, inside <think> and </think>, then give your response."

ENVIRONMENT = """# Environment

You work in a Linux container through the tools below, for at most {max_turns} turns. The bash session \
keeps its working directory and exported variables between calls; a call that runs longer than \
{timeout} seconds is stopped and the session restarts from the repository root. The whole conversation \
must fit in {context} tokens.

<tool: bash>
[commands]
</tool>
Runs one or more non-interactive bash commands (one line or several) and shows their output.

<tool: edit>
[path]
<<<<<<< SEARCH
[search lines]
=======
[replacement lines]
>>>>>>> REPLACE
</tool>
Replaces [search lines] in the existing file [path] with [replacement lines]. The search lines must match \
exactly one run of consecutive whole lines of the file, indentation and whitespace included.

<tool: create>
[path]
[content]
</tool>
Creates the file [path] with [content]. [path] must not exist yet; its parent directory must.

<tool: submit>
[path]
</tool>
Submits the patch file at [path] as your final answer.

Rules:
* Each response invokes exactly one tool.
* Your response may reason before the call, but holds no second call.{review_rule}"""

REVIEW_RULE = ("\n* After a submission you may review it and submit again; a response without a tool call "
               "then ends the task, with the last submission as your answer{heading}.")

ISSUE = """Resolve the following issue by changing the code of the repository, then submit a patch file.

<issue_description>
{issue}
</issue_description>

The repository is at {repo_root}, with its dependencies installed; the bash session starts there. The \
argument of <tool: submit> is the path of a patch file in git diff format (it starts with `diff`), for \
example made with `git diff > /tmp/fix.patch`, that holds all your changes to the code. Make sure the \
patch resolves the issue: reproduce the problem, run the relevant tests, and check your change before \
you submit."""

SUBMITTED = """This patch is now your submission:

<submission>
{patch}
</submission>

Review it. If it does not fully resolve the issue, keep working and submit again; otherwise reply \
without a tool call to finish."""


def system_prompt(max_turns: int, context_tokens: int, command_timeout_s: float, think: bool,
                  review_turn: bool, strict_format: bool) -> str:
    """The system message: who the assistant is, then the environment and its tools."""
    heading = " (that reply must contain a markdown `##` summary)" if strict_format else ""
    env = ENVIRONMENT.format(max_turns=max_turns, timeout=int(command_timeout_s), context=context_tokens,
                             review_rule=REVIEW_RULE.format(heading=heading) if review_turn else "")
    return SYSTEM_DESCRIPTION + (THINK_NOTE if think else "") + "\n\n" + env


def issue_prompt(issue: str, repo_root: str) -> str:
    """The first user turn: the issue text and where the repository is."""
    return ISSUE.format(issue=issue.strip(), repo_root=repo_root)


# --- the tools, run in a container ------------------------------------------------------------------------

# The bash session: the agent's commands come on stdin, so they may hold any quoting and get an empty stdin.
_BASH = r"""
S=%(dir)s
cmd=$(cat)
exec 2>&1 </dev/null
[ -f /opt/miniconda3/bin/activate ] && . /opt/miniconda3/bin/activate >/dev/null 2>&1
if [ -f $S/env ]; then . $S/env >/dev/null 2>&1; elif command -v conda >/dev/null 2>&1; then conda activate testbed >/dev/null 2>&1; fi
cd "$(cat $S/cwd 2>/dev/null || echo %(root)s)" 2>/dev/null || cd %(root)s
_cwm_save() { mkdir -p $S && pwd > $S/cwd && (export -n CWM_EXEC; export -p) > $S/env; }
trap _cwm_save EXIT
eval "$cmd"
"""

# Run before the agent starts: keep only the current branch and the tags it contains, no remotes, no reflog.
# Prints "prepared light" when removing the reflog files was all it took (the case for images built by
# cwm_envs.swe.images: their setup commit leaves a reflog), so `_LIGHT` does for other containers of the image.
_PREPARE = r"""
set -u
rm -rf %(dir)s
cd %(root)s 2>/dev/null && git rev-parse --git-dir >/dev/null 2>&1 || { echo prepared light; exit 0; }
gd=$(git rev-parse --git-dir)
changed=0
for r in $(git remote); do git remote remove "$r"; changed=1; done
cur=$(git symbolic-ref -q HEAD || true)
refs=$(git for-each-ref --format='%%(refname)')
for ref in $(printf '%%s\n' $refs | grep -v '^refs/tags/' | grep -vxF "${cur:-none}"); do
  git update-ref -d "$ref"; changed=1
done
if printf '%%s\n' $refs | grep -q '^refs/tags/'; then
  keep=$(git tag --merged HEAD)
  for tag in $(git for-each-ref --format='%%(refname:strip=2)' refs/tags); do
    printf '%%s\n' $keep | grep -qxF "$tag" || { git update-ref -d "refs/tags/$tag"; changed=1; }
  done
fi
if [ -e "$gd/logs" ] && [ "$(git rev-list --all --reflog | wc -l)" != "$(git rev-list --all | wc -l)" ]; then
  changed=1                       # the reflog holds commits nothing else reaches
fi
rm -rf "$gd/logs" "$gd/FETCH_HEAD" "$gd/ORIG_HEAD"
if [ $changed = 1 ]; then git gc -q --prune=now; echo prepared full; else echo prepared light; fi
"""
_LIGHT = r"""rm -rf %(dir)s; cd %(root)s 2>/dev/null && gd=$(git rev-parse --git-dir 2>/dev/null) && \
rm -rf "$gd/logs" "$gd/FETCH_HEAD" "$gd/ORIG_HEAD"; echo prepared light"""

_EDIT = r'''
import os, re, sys
arg = sys.stdin.read()
m = re.findall(r"(.*)\n<<<<<<< SEARCH\n([\s\S]*?)\n=======\n([\s\S]*?)\n>>>>>>> REPLACE", arg)
if not m:
    print("Could not read the edit. The format is:\n\n<tool: edit>\n[path]\n<<<<<<< SEARCH\n[search lines]\n"
          "=======\n[replacement lines]\n>>>>>>> REPLACE\n</tool>")
    sys.exit(1)
if len(m) > 1:
    print("An edit holds exactly one SEARCH/REPLACE block; this one holds %d." % len(m))
    sys.exit(1)
path, search, replace = m[0]
path = path.strip()
if not os.path.isfile(path):
    print("No file at %s. Give the path of an existing file." % path)
    sys.exit(1)
try:
    with open(path, encoding="utf-8", newline="") as f:
        text = "\n" + f.read()
except (OSError, UnicodeDecodeError) as e:
    print("Cannot read %s as UTF-8 text: %s" % (path, e))
    sys.exit(1)
needle = "\n" + search
hits, i = [], text.find(needle)
while i != -1:
    hits.append(i)
    i = text.find(needle, i + 1)
if not hits:
    msg = "Nothing replaced: the search lines do not appear verbatim in %s." % path
    first = search.split("\n", 1)[0]
    if first.strip() and first.strip() in text:
        msg += " They must match whole consecutive lines exactly, indentation included."
    print(msg)
    sys.exit(1)
if len(hits) > 1:
    lines = [text.count("\n", 0, h) + 1 for h in hits]
    print("Nothing replaced: the search lines occur %d times in %s (at lines %s). Include more lines to make "
          "them unique." % (len(hits), path, ", ".join(map(str, lines))))
    sys.exit(1)
new = text[:hits[0]] + "\n" + replace + text[hits[0] + len(needle):]
with open(path, "w", encoding="utf-8", newline="") as f:
    f.write(new[1:])
line = text.count("\n", 0, hits[0]) + 1
rows = new[1:].split("\n")
lo, hi = max(1, line - 8), min(len(rows), line + replace.count("\n") + 8)
shown = "\n".join("%6d\t%s" % (n, rows[n - 1]) for n in range(lo, hi + 1))
print("Edited %s at line %d; it now has %d lines. Lines %d-%d after the edit:\n%s\nCheck that the change is "
      "what you intended." % (path, line, len(rows), lo, hi, shown))
'''

_CREATE = r'''
import os, sys
arg = sys.stdin.read()
path, _, content = arg.partition("\n")
if not path.strip():
    print("The first line of a create call must be the path of the new file.")
    sys.exit(1)
if os.path.lexists(path):
    print("%s already exists; create makes new files only (use edit to change a file)." % path)
    sys.exit(1)
parent = os.path.dirname(os.path.abspath(path))
if not os.path.isdir(parent):
    print("Cannot create %s: the directory %s does not exist." % (path, parent))
    sys.exit(1)
if content and not content.endswith("\n"):
    content += "\n"
with open(path, "w", encoding="utf-8") as f:
    f.write(content)
print("Created %s (%d lines)." % (path, content.count("\n")))
'''

_IN_SESSION_DIR = 'cd "$(cat %(dir)s/cwd 2>/dev/null || echo %(root)s)" 2>/dev/null || cd %(root)s; '


class ToolBox:
    """CWM's tools over a sandbox that holds the repository (a `DockerSandbox`, or anything with its `run`).

    `prepare()` readies a fresh container for an episode; `call(ToolCall)` runs one tool and never raises
    for what the agent did (only a fault of the sandbox itself raises, as SandboxError).
    """

    def __init__(self, sandbox, repo_root: str = "/testbed", command_timeout_s: float = 120.0,
                 max_output_chars: int = DEFAULT_OUTPUT_CHARS):
        self.sandbox, self.root = sandbox, repo_root
        self.command_timeout_s, self.max_output_chars = float(command_timeout_s), int(max_output_chars)
        self._vars = {"dir": SESSION_DIR, "root": repo_root}

    def prepare(self, light: bool = False) -> str:
        """Strip git of what could leak the fix (remotes, other branches, later tags, reflog) and start a new
        session. Returns "light" when deleting the reflog files was enough: then `prepare(light=True)` (one
        quick command) readies any other container of the same image; else "full"."""
        from cwm_envs.errors import SandboxError

        script = (_LIGHT if light else _PREPARE) % self._vars
        res = self.sandbox.run(["bash", "-c", script], timeout=300, limits=COMMAND_OUTPUT)
        m = re.search(r"^prepared (light|full)$", res.stdout, re.M)
        if not m:
            raise SandboxError(f"preparing the repository failed (exit {res.exit_code}): "
                               f"{(res.stdout + res.stderr)[-500:]}")
        return m.group(1)

    def call(self, call: ToolCall) -> ToolResult:
        return getattr(self, f"_{call.name}")(call.arg)

    def _bash(self, commands: str) -> ToolResult:
        res = self.sandbox.run(["bash", "-c", _BASH % self._vars], stdin=commands, timeout=self.command_timeout_s,
                               limits=COMMAND_OUTPUT)
        out = (res.stdout + res.stderr).rstrip("\n")
        if res.timed_out:
            self.sandbox.run(["rm", "-rf", SESSION_DIR], timeout=30)
            note = (f"The command ran past {self.command_timeout_s:g} seconds and was stopped. A fresh session has "
                    f"started in {self.root}; the working directory and exported variables are back to their defaults.")
            return ToolResult(clip(out, self.max_output_chars // 2) + ("\n" if out else "") + note, False, True)
        if res.limit_hit == "output" or res.truncated:
            out = clip(out, self.max_output_chars) + "\n[output truncated: the command printed more than 1 MiB]"
        elif res.limit_hit == "memory":
            out += "\n[the command was killed: it ran out of memory]"
        elif res.limit_hit == "file_size":
            out += "\n[the command was stopped: it wrote a file larger than 2 GiB]"
        return ToolResult(clip(out, self.max_output_chars), res.exit_code == 0)

    def _plugin(self, script: str, arg: str) -> ToolResult:
        cmd = _IN_SESSION_DIR % self._vars + 'exec python3 -c "$0"'
        res = self.sandbox.run(["bash", "-c", cmd, script], stdin=arg, timeout=60, limits=COMMAND_OUTPUT)
        out = (res.stdout + res.stderr).rstrip("\n")
        if res.timed_out:
            out = "The tool did not finish within 60 seconds."
        return ToolResult(clip(out, self.max_output_chars), res.exit_code == 0 and not res.timed_out)

    def _edit(self, arg: str) -> ToolResult:
        return self._plugin(_EDIT, arg)

    def _create(self, arg: str) -> ToolResult:
        return self._plugin(_CREATE, arg)

    def _submit(self, arg: str) -> ToolResult:
        path = arg.strip()
        res = self.sandbox.run(["bash", "-c", _IN_SESSION_DIR % self._vars + 'cat -- "$0"', path], timeout=60,
                               limits=PATCH_OUTPUT)
        if res.exit_code != 0 or res.timed_out:
            return ToolResult(f"Could not submit {path}: the file does not exist or cannot be read.", False)
        if res.truncated:
            return ToolResult(f"Could not submit {path}: the file is larger than 16 MiB.", False)
        patch = res.stdout
        if not patch.strip():
            return ToolResult(f"Could not submit {path}: the file is empty.", False)
        if not patch.startswith("diff"):
            return ToolResult(f"Could not submit {path}: it is not a patch in git diff format (it must start "
                              "with `diff`).", False)
        return ToolResult(patch, True, patch=patch)
