"""`cwm view RUN_DIR`: one static HTML page of an RL run, readable offline, that nothing can reach out of.

It shows the curves of `metrics.jsonl` (reward and pass rates, response length, staleness, KL to the start)
as one inline SVG drawn by matplotlib, and the episodes of `trajectories.jsonl` (the newest `--limit`), each
with its prompt, turns, tool calls, env replies, rewards and evidence, filterable by env and by outcome.

Everything is in the one file: no script, style or font is fetched. Every text from the run (policy output
above all: a policy will write `<script>` sooner or later) is HTML-escaped, and a Content-Security-Policy lets
only the page's own filter script run (by its hash) and loads nothing from anywhere.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import sys
from collections import Counter, deque
from pathlib import Path
from typing import Any, Iterable

from agents.metrics import TRAJECTORIES
from cwm_envs.errors import UsageError

OUTCOMES = ("pass", "fail", "cut", "error")
PANELS = (  # (title, y label, [(metrics key, legend label, style)])
    ("reward", "reward / pass rate", [("reward_mean", "train reward (mean)", "-"),
                                      ("pass_rate", "train pass rate", "-"),
                                      ("eval_sampled", "held-out sampled", "o-"),
                                      ("eval_greedy", "held-out greedy", "s--")]),
    ("length", "policy tokens per episode", [("length_mean", "mean response length", "-")]),
    ("staleness", "versions behind", [("staleness_mean", "mean", "-"), ("staleness_max", "max", "--")]),
    ("KL to the start", "KL (k3)", [("kl_to_start", "KL to start", "-")]),
)

SCRIPT = """
const env = document.getElementById("env"), outcome = document.getElementById("outcome");
function apply() {
  let shown = 0;
  for (const t of document.querySelectorAll(".traj")) {
    const keep = (!env.value || t.dataset.env === env.value) && (!outcome.value || t.dataset.outcome === outcome.value);
    t.hidden = !keep;
    shown += keep;
  }
  document.getElementById("shown").textContent = shown;
}
env.addEventListener("change", apply);
outcome.addEventListener("change", apply);
apply();
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
.facts td { padding: 0 1em 0 0; } .curves svg { max-width: 100%; height: auto; }
.filters { margin: 0.5em 0 1em; } .filters label { margin-right: 1.5em; }
details.traj { border: 1px solid #ccc; border-radius: 4px; margin: 0.4em 0; padding: 0.3em 0.6em; }
details.traj[hidden] { display: none; }
summary { cursor: pointer; } details.prompt { margin: 0.4em 0; }
.badge { display: inline-block; min-width: 3.5em; text-align: center;
  border-radius: 3px; color: #fff; font-weight: 600; margin-right: 0.5em; }
.pass { background: #2e7d32; } .fail { background: #c62828; }
.cut { background: #ef6c00; } .error { background: #6a1b9a; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: 0.4em; margin: 0.2em 0; }
pre.action { background: #e8f0fe; } pre.reply { background: #f1f8e9; } pre.tool { background: #fff8e1; }
.turn { border-left: 3px solid #90a4ae; padding-left: 0.6em; margin: 0.6em 0; }
.muted { color: #666; } .err { color: #6a1b9a; font-weight: 600; }
"""


# --- reading ----------------------------------------------------------------------------------------------

def read_jsonl(path: Path, keep: int | None = None) -> tuple[list[dict], int]:
    """The JSON objects of `path` (the last `keep` of them), and how many lines were not JSON objects (a run
    still writing may leave half a line)."""
    rows: Iterable = deque(maxlen=keep) if keep else []
    bad = 0
    if path.is_file():
        with path.open(errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    bad += 1
    return list(rows), bad


# --- curves -----------------------------------------------------------------------------------------------

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def curves_svg(rows: list[dict]) -> str:
    """The four panels as one `<svg>` element (text kept as text, so it stays small and searchable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "cwm-view"}):
        fig, axes = plt.subplots(2, 2, figsize=(11, 6.5))
        for ax, (title, ylabel, series) in zip(axes.flat, PANELS):
            drawn = False
            for key, label, style in series:
                pts = [(r["step"], r[key]) for r in rows if _number(r.get(key)) and _number(r.get("step"))]
                if pts:
                    ax.plot(*zip(*pts), style, lw=1.2, ms=4, label=label)
                    drawn = True
            if drawn:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "not recorded in this run", ha="center", va="center", transform=ax.transAxes,
                        color="#888")
            ax.set_title(title, fontsize=11)
            ax.set_xlabel("update", fontsize=9)
            ax.set_ylabel(ylabel, fontsize=9)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


# --- episodes ---------------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pre(text: Any, cls: str = "") -> str:
    return f'<pre class="{cls}">{_e(text)}</pre>' if text not in (None, "") else ""


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def episode_html(ep: dict) -> str:
    """One episode as a `<details>` block whose data attributes the filters read."""
    outcome = ep.get("outcome") if ep.get("outcome") in OUTCOMES else "fail"
    turns = ep.get("turns") if isinstance(ep.get("turns"), list) else []
    head = (f'<span class="badge {outcome}">{outcome}</span> step {_e(ep.get("step", "?"))}'
            f' · {_e(ep.get("env_id", ""))}'
            f' · task {_e(ep.get("task_id", ""))} · reward {_e(_fmt(ep.get("reward", "")))} · {len(turns)} turn(s)'
            f' · {_e(ep.get("policy_tokens", "?"))} policy tokens · version {_e(ep.get("version", "?"))}')
    prompt = str(ep.get("prompt") or "")
    body = [f'<details class="prompt"><summary>prompt ({len(prompt)} characters)</summary>{_pre(prompt)}</details>']
    for k, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            continue
        calls = turn.get("tool_calls") if isinstance(turn.get("tool_calls"), list) else []
        body.append(f'<div class="turn"><b>turn {k}</b> <span class="muted">reward {_e(_fmt(turn.get("reward")))}, '
                    f'{_e(turn.get("tokens", "?"))} tokens</span>')
        body.append(_pre(turn.get("action"), "action"))
        for call in calls:
            if isinstance(call, dict):
                body.append(f'<div>tool call <b>{_e(call.get("name", ""))}</b></div>{_pre(call.get("arg"), "tool")}')
        if turn.get("reply"):
            body.append(f'<div class="muted">env reply</div>{_pre(turn.get("reply"), "reply")}')
        body.append("</div>")
    if ep.get("error"):
        body.append(f'<p class="err">error (not trained on): {_e(ep["error"])}</p>')
    if ep.get("evidence"):
        body += ["<h4>evidence (the env's final info)</h4>", _pre(json.dumps(ep["evidence"], indent=1, default=str))]
    return (f'<details class="traj" data-env="{_e(ep.get("env_id", ""))}" data-outcome="{outcome}">'
            f'<summary>{head}</summary>{"".join(body)}</details>')


def _options(values: Iterable[str]) -> str:
    return '<option value="">all</option>' + "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)


# --- the page ---------------------------------------------------------------------------------------------

def render(run: Path, rows: list[dict], episodes: list[dict], notes: list[str]) -> str:
    """The HTML page (a string)."""
    csp_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{csp_hash}'"
    train = [r for r in rows if "reward_mean" in r]
    evals = [r for r in rows if "eval_greedy" in r or "eval_sampled" in r]
    facts = [("run", run.resolve()), ("updates recorded", len(train)),
             ("last update", f'step {train[-1].get("step")}, reward {_fmt(train[-1].get("reward_mean"))}, pass rate '
                             f'{_fmt(train[-1].get("pass_rate"))}' if train else "none"),
             ("held-out evaluations", ", ".join(f'step {r.get("step")}: sampled {_fmt(r.get("eval_sampled"))}, greedy '
                                                f'{_fmt(r.get("eval_greedy"))}' for r in evals) or "none")]
    stage = _stage(run)
    if stage:
        facts.insert(1, ("setting", stage))
    episodes = sorted(episodes, key=lambda e: -e["step"] if _number(e.get("step")) else 0)
    envs = sorted({str(e.get("env_id", "")) for e in episodes})
    counts = Counter(e.get("outcome") if e.get("outcome") in OUTCOMES else "fail" for e in episodes)
    outcome_opts = [o for o in OUTCOMES if counts[o]]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        f"<title>cwm view: {_e(run.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>RL run {_e(run.name)}</h1>",
        '<table class="facts">' + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in facts) + "</table>",
        *(f'<p class="muted">{_e(n)}</p>' for n in notes),
        "<h2>Curves</h2>",
        f'<div class="curves">{curves_svg(rows)}</div>' if rows else '<p class="muted">no metrics.jsonl rows yet</p>',
        "<h2>Sampled episodes</h2>",
        '<p class="muted">' + (", ".join(f"{counts[o]} {o}" for o in outcome_opts) or "none written") + "</p>",
        '<div class="filters">',
        f'<label>env <select id="env">{_options(envs)}</select></label>',
        f'<label>outcome <select id="outcome">{_options(outcome_opts)}</select></label>',
        f'<span id="shown">{len(episodes)}</span> of {len(episodes)} shown</div>',
        '<div id="episodes">', *(episode_html(e) for e in episodes), "</div>",
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)


def _stage(run: Path) -> str:
    try:
        args = json.loads((run / "stage.json").read_text())["args"]
        return f'{args["algo"]} on {args["env"]}, {args["tasks"]} tasks x {args["group"]} per update, ' \
               f'{args["workers"]} worker(s), model {args["model"]}'
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def write_view(run_dir: str | Path, out: str | Path | None = None, limit: int = 200) -> Path:
    """Write the page for `run_dir` (default `RUN_DIR/view.html`) and return its path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"{run} is not a directory")
    if not (run / "metrics.jsonl").is_file() and not (run / TRAJECTORIES).is_file():
        raise UsageError(f"{run} has neither metrics.jsonl nor {TRAJECTORIES}: not an RL run directory")
    if limit < 1:
        raise UsageError("--limit must be at least 1")
    rows, bad_rows = read_jsonl(run / "metrics.jsonl")
    episodes, bad_eps = read_jsonl(run / TRAJECTORIES, keep=limit)
    notes = [f"{n} unreadable line(s) in {name} skipped" for n, name in ((bad_rows, "metrics.jsonl"),
                                                                        (bad_eps, TRAJECTORIES)) if n]
    if not (run / TRAJECTORIES).is_file():
        notes.append(f"no {TRAJECTORIES}: this run wrote no episodes (--log-trajectories 0, or an older run)")
    path = Path(out) if out else run / "view.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(run, rows, episodes, notes), encoding="utf-8")
    return path


def cmd_view(args) -> int:
    """`cwm view RUN_DIR`: write the page and say where."""
    path = write_view(args.run_dir, args.out, args.limit)
    print(f"view: {path}")
    return 0


def register(sub) -> None:
    """Add `cwm view`."""
    p = sub.add_parser("view", help="write a static HTML report of an RL run: curves and sampled episodes",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="an RL run directory (`cwm train rl --out`)")
    p.add_argument("--out", help="the HTML file to write (default RUN_DIR/view.html)")
    p.add_argument("--limit", type=int, default=200, help="newest episodes shown (default 200)")
    p.set_defaults(func=cmd_view)


def main(argv: list[str] | None = None) -> int:
    """`python -m agents.view RUN_DIR`: the same command without the `cwm` entry point."""
    import argparse

    from cwm_envs.errors import CwmError

    parser = argparse.ArgumentParser(prog="cwm view")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["view", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except CwmError as exc:
        print(f"cwm view: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
