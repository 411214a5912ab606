"""CWM's chat format, as in the public CWM release.

`<|begin_of_text|>` then for each message `<|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>`,
roles `system`, `user`, `assistant`, `tool: NAME`; reasoning goes inside `<think>\n...\n</think>`.
"""
from __future__ import annotations

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
EOT = "<|eot_id|>"
HEADER_START = "<|start_header_id|>"
HEADER_END = "<|end_header_id|>"

REASONING_SYSTEM_PROMPT = (
    "You are a helpful AI assistant. You always reason before responding, using the following format:\n\n"
    "<think>\nyour internal reasoning\n</think>\nyour external response"
)


def format_message(role: str, content: str) -> str:
    """One message in CWM's chat format (header, blank line, content, end of turn)."""
    return f"{HEADER_START}{role}{HEADER_END}\n\n{content}{EOT}"


def assistant_header() -> str:
    """The header that opens the assistant's turn (the model continues from here)."""
    return f"{HEADER_START}assistant{HEADER_END}\n\n"


def format_chat(messages: list[dict], add_generation_prompt: bool = True, think: bool = True) -> str:
    """Render `[{"role": ..., "content": ...}, ...]` in CWM's format.

    With `add_generation_prompt` the text ends with the assistant header (and `<think>\n` when `think`),
    ready for the model to continue.
    """
    text = BOS + "".join(format_message(m["role"], m["content"]) for m in messages)
    if add_generation_prompt:
        text += assistant_header() + ("<think>\n" if think else "")
    return text


def tool_message(name: str, content: str) -> str:
    """A tool's answer, as the `tool: NAME` role CWM's format gives it."""
    return format_message(f"tool: {name}", content)
