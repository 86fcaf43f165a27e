"""An Ollama Modelfile for a GGUF export: the chat template turned into Ollama's Go template.

The Jinja template is rendered with marker strings in place of the messages; the text around
the markers gives each role's prefix and suffix, which a Go template can repeat. Templates that
do not fit that shape (roles merged, system refused) get a Modelfile without TEMPLATE and a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_SYS, _U1, _A1, _U2 = "\x01SYSTEM\x01", "\x01USER1\x01", "\x01ASSISTANT1\x01", "\x01USER2\x01"


@dataclass(frozen=True)
class ChatPieces:
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation_prompt: str
    default_system: str  # what the template writes when no system message is given


def _render(tokenizer: Any, messages: list[dict[str, str]], gen: bool) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen))


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i:text.index(end, i)]


def chat_pieces(tokenizer: Any) -> ChatPieces | None:
    """Split the chat template into role prefixes/suffixes, or None when it does not fit."""
    sys_msg = {"role": "system", "content": _SYS}
    u1, a1 = {"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}
    u2 = {"role": "user", "content": _U2}
    try:
        one = _render(tokenizer, [sys_msg, u1], False)
        gen = _render(tokenizer, [sys_msg, u1], True)
        answered = _render(tokenizer, [sys_msg, u1, a1], False)
        two = _render(tokenizer, [sys_msg, u1, a1, u2], False)
        plain = _render(tokenizer, [u1], False)
    except Exception:  # a template that refuses system messages, or a non-alternating order
        return None
    if not gen.startswith(one) or _SYS not in one or _A1 not in answered:
        return None
    user_suffix = one[one.index(_U1) + len(_U1):]
    assistant_suffix = answered[answered.index(_A1) + len(_A1):]
    after_u1, after_a1 = _between(two, _U1, _A1), _between(two, _A1, _U2)
    sys_to_user = _between(one, _SYS, _U1)
    if not (after_u1.startswith(user_suffix) and after_a1.startswith(assistant_suffix)):
        return None
    user_prefix = after_a1[len(assistant_suffix):]
    if not (user_prefix and sys_to_user.endswith(user_prefix)
            and plain.endswith(_U1 + user_suffix)):
        return None
    default = plain[: plain.index(_U1)]
    return ChatPieces(
        system_prefix=one[: one.index(_SYS)],
        system_suffix=sys_to_user[: len(sys_to_user) - len(user_prefix)],
        user_prefix=user_prefix, user_suffix=user_suffix,
        assistant_prefix=after_u1[len(user_suffix):], assistant_suffix=assistant_suffix,
        generation_prompt=gen[len(one):],
        default_system=default[: len(default) - len(user_prefix)]
        if default.endswith(user_prefix) else "")


def _go(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def go_template(p: ChatPieces) -> str:
    """Ollama's TEMPLATE: messages in order, then the generation prompt. No whitespace-trimming
    actions ({{- ...}}): they would eat the newlines the chat format needs."""
    default = (f'{{{{ if not (eq (index .Messages 0).Role "system") }}}}'
               f"{_go(p.default_system)}{{{{ end }}}}" if p.default_system else "")
    return (
        f"{default}{{{{ range .Messages }}}}"
        f'{{{{ if eq .Role "system" }}}}{_go(p.system_prefix)}{{{{ .Content }}}}'
        f"{_go(p.system_suffix)}"
        f'{{{{ else if eq .Role "user" }}}}{_go(p.user_prefix)}{{{{ .Content }}}}'
        f"{_go(p.user_suffix)}"
        f'{{{{ else if eq .Role "assistant" }}}}{_go(p.assistant_prefix)}{{{{ .Content }}}}'
        f"{_go(p.assistant_suffix)}"
        f"{{{{ end }}}}{{{{ end }}}}{_go(p.generation_prompt)}")


def modelfile(tokenizer: Any, gguf_name: str, stop_texts: list[str],
              bos_text: str | None = None) -> tuple[str, list[str]]:
    """The Modelfile text and notes about what it could not express."""
    lines = [f"FROM ./{gguf_name}", ""]
    notes = []
    pieces = chat_pieces(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    if pieces is None:
        notes.append("the chat template could not be expressed as an Ollama TEMPLATE; Ollama "
                     "will use the template stored in the GGUF file where it can")
    else:
        template = go_template(pieces)
        if bos_text and template.startswith(bos_text):
            template = template[len(bos_text):]  # llama.cpp adds BOS itself
        lines += [f'TEMPLATE """{template}"""', ""]
    for text in stop_texts:
        lines.append(f"PARAMETER stop {_quote(text)}")
    return "\n".join(lines) + "\n", notes


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
