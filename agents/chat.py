"""Chat templates: how a model turns ``messages`` into the text it was trained on.

A model's own template comes from its GGUF metadata (``tokenizer.chat_template``). A model without
one can be given a template in the agent's configuration (``agent.chat_formats``: model name ->
``gemma``, ``chatml``, ``none`` or the path of a Jinja file). With neither, ``auto`` supplies
Gemma's published format for Gemma models (the bundled Gemma 3 270M carries no template) and
leaves other models unable to chat: their chat requests are refused, never rendered wrongly.
Templates are rendered in Jinja2's sandbox (llama-cpp-python's ``Jinja2ChatFormatter``): a
template inside a model file is not trusted code.
"""

from __future__ import annotations

import re
from pathlib import Path

from agents.errors import BackendError

# Gemma 3's chat template as Google publishes it (tokenizer_config.json), for text content.
GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

CHATML = """{%- for message in messages -%}
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}
"""

BUILT_IN = {"gemma": GEMMA, "chatml": CHATML}
FORMATS = ("auto", "none", *BUILT_IN)


def template_for(metadata: dict[str, str], setting: str) -> tuple[str | None, str]:
    """(the Jinja template, where it came from) for a model with GGUF ``metadata``; (None, why not) when
    the model cannot chat. Where it came from is what the agent's status shows: ``gguf`` (the model's
    own), ``gemma`` or ``chatml`` (fogmesh's), or ``file``."""
    if setting == "none":
        return None, "chat is turned off for this model (agent.chat_formats)"
    if setting in BUILT_IN:
        return BUILT_IN[setting], setting
    if setting != "auto":
        path = Path(setting).expanduser()
        try:
            return path.read_text(), "file"
        except OSError as exc:
            raise BackendError("model_load_failed", f"chat template {path} (agent.chat_formats): {exc.strerror}; "
                               f"give a Jinja file or one of {', '.join(FORMATS)}") from exc
    own = metadata.get("tokenizer.chat_template")
    if own:
        return own, "gguf"
    if metadata.get("general.architecture", "").startswith("gemma"):
        return GEMMA, "gemma"  # Gemma's published format: the bundled file has no template
    return None, "the model file has no chat template; set one in agent.chat_formats"


class ChatRenderer:
    """Renders messages with one template, the way the model's tokenizer expects them.

    The template's own text (``<start_of_turn>user``) is tokenized with special tokens; what the
    device wrote is not. A message whose content spells ``<end_of_turn>`` or ``<start_of_turn>model``
    stays text to the model instead of closing the turn and opening another (prompt injection
    through a template). Each content is rendered as a placeholder, then put back in between.
    """

    def __init__(self, template: str, bos: str, eos: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        try:
            self._format = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        except Exception as exc:  # jinja2's TemplateSyntaxError and friends
            raise BackendError("model_load_failed", f"the chat template does not parse: {exc}") from exc

    def __call__(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        """The rendered conversation as (text, is the template's own) pieces, in order."""
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
        try:
            text = self._format(messages=[{"role": m["role"], "content": mark}  # type: ignore[misc]
                                          for m, mark in zip(messages, marks, strict=True)]).prompt
        except Exception as exc:  # raise_exception() in the template, or a template error
            raise BackendError("bad_messages", f"the model's chat template refused the messages: {exc}") from exc
        pieces: list[tuple[str, bool]] = []
        placed: set[int] = set()
        for part in PLACEHOLDER.split(text):
            if PLACEHOLDER.fullmatch(part) and int(part[1:-1]) < len(messages):
                placed.add(int(part[1:-1]))
                pieces.append((messages[int(part[1:-1])]["content"], False))
            elif part:
                pieces.append((part, True))
        lost = [i for i, m in enumerate(messages) if m["role"] != "system" and i not in placed]
        if lost:  # e.g. a template that writes content through tojson: the device's text would vanish
            raise BackendError("bad_messages", f"the model's chat template does not write message {lost[0]}'s "
                               "content as text; fogmesh cannot render it safely (configure agent.chat_formats)")
        return pieces


PLACEHOLDER = re.compile("(\ue000\\d+\ue001)")
