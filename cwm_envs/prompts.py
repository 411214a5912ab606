"""Prompt templates as data: every text env's system, user and tool prompts are named templates, ours by
default, any of which a user replaces with a file (`env kwargs prompts=DIR`, `--prompts DIR` in the
benches). A checkpoint trained on other prompts (CWM's are published with its code) is then evaluated
with the prompts it was trained on.

A prompts directory holds `NAME.txt` files, one per template it replaces; names not listed in `FIELDS`
are refused (a typo would otherwise leave our prompt in place silently). A template is a Python format
string with the fields listed for its name (`{problem}`); a literal brace is written twice (`{{`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from cwm_envs.errors import UsageError

# name -> the fields its template may use
FIELDS: dict[str, tuple[str, ...]] = {
    "system": (),                                       # the reasoning system prompt (thinking on)
    "math_cot": ("problem",),                           # Math-v0's user turn, prompt_style="cot"
    "math_direct": ("problem",),                        # ... prompt_style="direct"
    "math_tool_system": ("max_tool_calls",),            # MathTool-v0: what follows the system prompt
    "prediction_output": ("code", "entry", "input"),    # OutputPrediction-v0 (CRUXEval-O)
    "prediction_input": ("code", "entry", "output"),    # InputPrediction-v0 (CRUXEval-I)
    "code_function": ("prompt", "format_rule"),         # Code-v0: complete a function (HumanEval)
    "code_starter": ("problem", "starter_code", "format_rule"),  # ... a problem with starter code (LCB)
    "code_stdin": ("problem", "format_rule"),           # ... a stdin/stdout program
}


def load_prompts(source: str | Path | Mapping[str, str] | None) -> dict[str, str]:
    """The templates a user replaces: from a directory of `NAME.txt` files or a mapping; checked here."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        found = dict(source)
    else:
        path = Path(source)
        if not path.is_dir():
            raise UsageError(f"prompts {path}: not a directory of NAME.txt templates")
        found = {f.stem: f.read_text() for f in sorted(path.glob("*.txt"))}
        if not found:
            raise UsageError(f"prompts {path}: no NAME.txt template in it (names: {', '.join(FIELDS)})")
    for name, text in found.items():
        if name not in FIELDS:
            raise UsageError(f"prompt template {name!r} is not one of: {', '.join(FIELDS)}")
        try:
            text.format(**{f: "" for f in FIELDS[name]})
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(f"prompt template {name!r}: {type(exc).__name__} {exc} (its fields: "
                             f"{', '.join(FIELDS[name]) or 'none'}; write a literal brace twice)") from None
    return found
