"""CWM's execution-trace text format: emit it from frames, parse it back (as in the public CWM release).

    <|trace_context_start|>$CONTEXT<|frame_sep|>
    <|call_sep|>$LOCALS<|action_sep|>$SOURCE_LINE<|frame_sep|>
    <|line_sep|>$LOCALS<|action_sep|>$SOURCE_LINE<|frame_sep|>
    <|return_sep|><|action_sep|>$SOURCE_LINE<|arg_sep|>$VALUE<|frame_sep|>
    <|exception_sep|><|action_sep|>$SOURCE_LINE<|arg_sep|>$VALUE<|frame_sep|>
    <|end_of_text|>                      (once execution leaves the entry scope)

CONTEXT is the source with `  # << START_OF_TRACE` appended to the entry line. LOCALS is `json.dumps` (default
separators, ASCII escapes) of {name: repr}; a value equal to the one in the previous frame of the same segment
is written "..". A segment starts at a call frame and ends at the next call or return frame, exactly where
CWM's reader (`demos/cwmdbg.py`) stops walking back, so the first line frame after a nested call returns
spells every value out. VALUE is `json.dumps` of the repr. SOURCE_LINE is the line as written, with its
newline. `<|begin_of_text|>` is not part of a trace: a tokenizer adds it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

FRAME_SEP = "<|frame_sep|>"
ACTION_SEP = "<|action_sep|>"
RETURN_SEP = "<|return_sep|>"
CALL_SEP = "<|call_sep|>"
LINE_SEP = "<|line_sep|>"
EXCEPTION_SEP = "<|exception_sep|>"
ARG_SEP = "<|arg_sep|>"
TRACE_CONTEXT_START = "<|trace_context_start|>"
BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
START_MARKER = "  # << START_OF_TRACE"
UNCHANGED = ".."

EVENT_TOKENS = {"call": CALL_SEP, "line": LINE_SEP, "return": RETURN_SEP, "exception": EXCEPTION_SEP}
TOKEN_EVENTS = {tok: ev for ev, tok in EVENT_TOKENS.items()}
SPECIAL_TOKENS = [FRAME_SEP, ACTION_SEP, RETURN_SEP, CALL_SEP, LINE_SEP, EXCEPTION_SEP, ARG_SEP,
                  TRACE_CONTEXT_START]  # ids 128100..128107, in this order


class TraceFormatError(ValueError):
    """Text that is not in CWM's trace format (a malformed prediction, a broken corpus line)."""


@dataclass
class Frame:
    """One execution step. `locals` is the full snapshot (".." resolved) for call/line frames, {} otherwise;
    `arg` is the repr of the returned value or raised exception. `lineno` and `depth` (0 = entry scope) are
    known when the frame comes from the tracer; the parser fills `depth` and leaves `lineno` None."""

    event: str
    source: str
    locals: dict[str, str] = field(default_factory=dict)
    arg: str | None = None
    lineno: int | None = None
    depth: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Frame":
        return cls(d["event"], d["source"], dict(d.get("locals") or {}), d.get("arg"), d.get("lineno"), d.get("depth"))

    def same_step(self, other: "Frame") -> bool:
        """Equal as the text format sees it (event, line text, locals, value); lineno and depth ignored."""
        return (self.event, self.source, self.locals, self.arg) == (other.event, other.source, other.locals, other.arg)


def mark_context(code: str, entry_line: int) -> str:
    """The trace context: `code` with the START_OF_TRACE marker on line `entry_line` (1-based)."""
    lines = code.split("\n")
    if not 1 <= entry_line <= len(lines):
        raise ValueError(f"entry line {entry_line} outside the code (1..{len(lines)})")
    lines[entry_line - 1] += START_MARKER
    return "\n".join(lines)


def context_prefix(context: str) -> str:
    """The text that opens a trace: the context, then the first frame separator."""
    return TRACE_CONTEXT_START + context + FRAME_SEP


def frame_texts(frames: list[Frame], segment: dict[str, str] | None = None) -> list[str]:
    """Each frame's text (ending with <|frame_sep|>), values unchanged within a segment written "..".

    `segment` is the resolved locals of the frame before `frames[0]` when it is in the same segment (for
    emitting a continuation after a prefix); None starts fresh.
    """
    out = []
    for f in frames:
        if f.event not in EVENT_TOKENS:
            raise TraceFormatError(f"unknown event {f.event!r}")
        if f.event in ("call", "line"):
            if f.event == "line" and segment is not None:
                shown = {k: UNCHANGED if segment.get(k) == v else v for k, v in f.locals.items()}
            else:
                shown = f.locals
            out.append(f"{EVENT_TOKENS[f.event]}{json.dumps(shown)}{ACTION_SEP}{f.source}{FRAME_SEP}")
            segment = f.locals
        else:
            out.append(f"{EVENT_TOKENS[f.event]}{ACTION_SEP}{f.source}{ARG_SEP}{json.dumps(f.arg)}{FRAME_SEP}")
            if f.event == "return":
                segment = None
    return out


def segment_before(frames: list[Frame]) -> dict[str, str] | None:
    """The resolved locals that a frame following `frames` would be diffed against (None: a fresh segment)."""
    for f in reversed(frames):
        if f.event == "return":
            return None
        if f.event in ("call", "line"):
            return f.locals
    return None


def emit(context: str, frames: list[Frame], complete: bool = True) -> str:
    """The whole trace text; `complete` appends <|end_of_text|> (the entry scope was left)."""
    return context_prefix(context) + "".join(frame_texts(frames)) + (EOS if complete else "")


def emit_continuation(prefix: list[Frame], frames: list[Frame], complete: bool) -> str:
    """The text of `frames` as it follows `prefix` in a trace (what a model predicts after a prefix)."""
    return "".join(frame_texts(frames, segment_before(prefix))) + (EOS if complete else "")


@dataclass
class ParsedTrace:
    """A trace read back from text; `complete`: it ends with <|end_of_text|> (the entry scope was left)."""
    context: str
    frames: list[Frame]
    complete: bool


def _parse_frame(chunk: str, n: int) -> tuple[str, dict, str, str | None]:
    event = TOKEN_EVENTS.get(chunk[: chunk.find("|>") + 2]) if chunk.startswith("<|") else None
    if event is None:
        raise TraceFormatError(f"frame {n}: does not start with an event token: {chunk[:40]!r}")
    body = chunk[len(EVENT_TOKENS[event]):]
    head, sep, rest = body.partition(ACTION_SEP)
    if not sep:
        raise TraceFormatError(f"frame {n}: no {ACTION_SEP}")
    raw_locals: dict = {}
    arg = None
    if event in ("call", "line"):
        try:
            raw_locals = json.loads(head)
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"frame {n}: locals are not JSON ({exc.msg})") from None
        if not isinstance(raw_locals, dict) or not all(isinstance(v, str) for v in raw_locals.values()):
            raise TraceFormatError(f"frame {n}: locals must be an object of strings")
        source = rest
        if ARG_SEP in source:
            raise TraceFormatError(f"frame {n}: a {event} frame has no value")
    else:
        if head:
            raise TraceFormatError(f"frame {n}: a {event} frame has no locals")
        source, sep, value = rest.partition(ARG_SEP)
        if not sep:
            raise TraceFormatError(f"frame {n}: no {ARG_SEP} in a {event} frame")
        try:
            arg = json.loads(value)
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"frame {n}: value is not JSON ({exc.msg})") from None
        if not isinstance(arg, str):
            raise TraceFormatError(f"frame {n}: value must be a JSON string")
    return event, raw_locals, source, arg


def parse_frames(text: str, prefix: list[Frame] | None = None) -> tuple[list[Frame], bool]:
    """Frames of `text` (a run of frames, e.g. a model's continuation of `prefix`) and whether it ends with
    <|end_of_text|>. ".." resolves by walking back through the segment, as CWM's reader does; an
    unresolvable ".." raises TraceFormatError, as does any malformed frame or trailing text."""
    prefix = prefix or []
    complete = False
    body = text
    if body.endswith(EOS):
        body, complete = body[: -len(EOS)], True
    if body and not body.endswith(FRAME_SEP):
        raise TraceFormatError(f"text after the last {FRAME_SEP}: {body[-60:]!r}")
    chunks = body.split(FRAME_SEP)[:-1] if body else []
    history = list(prefix)
    depth = _depth_after(prefix)  # frames open before the first one
    frames = []
    for n, chunk in enumerate(chunks):
        event, raw, source, arg = _parse_frame(chunk, n)
        resolved = {k: _resolve(k, history, n) if v == UNCHANGED and event == "line" else v for k, v in raw.items()}
        frame = Frame(event, source, resolved, arg, None, depth if event == "call" else max(depth - 1, 0))
        depth += (event == "call") - (event == "return")
        history.append(frame)
        frames.append(frame)
    return frames, complete


def _depth_after(frames: list[Frame]) -> int:
    depth = 0
    for f in frames:
        depth += (f.event == "call") - (f.event == "return")
    return depth


def _resolve(name: str, history: list[Frame], n: int) -> str:
    for f in reversed(history):
        if name in f.locals:
            return f.locals[name]
        if f.event in ("call", "return"):
            break
    raise TraceFormatError(f"frame {n}: {name!r} is '..' but has no earlier value in its scope")


def parse(text: str) -> ParsedTrace:
    """Read a whole trace (optionally led by <|begin_of_text|>) back into its context and frames."""
    if text.startswith(BOS):
        text = text[len(BOS):]
    if not text.startswith(TRACE_CONTEXT_START):
        raise TraceFormatError(f"a trace starts with {TRACE_CONTEXT_START}")
    context, sep, rest = text[len(TRACE_CONTEXT_START):].partition(FRAME_SEP)
    if not sep:
        raise TraceFormatError(f"no {FRAME_SEP} after the context")
    frames, complete = parse_frames(rest)
    return ParsedTrace(context, frames, complete)
