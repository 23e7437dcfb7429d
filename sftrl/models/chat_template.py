"""ChatML chat templates (jinja) for the models made here.

Messages follow the HF convention: ``content`` is a string or a list of parts
(``{"type": "text", "text": ...}``, ``{"type": "image"}``; the demonstrations' ``image_url`` parts
count as images). Assistant turns are wrapped in ``{% generation %}`` so that
``apply_chat_template(..., return_assistant_tokens_mask=True)`` gives the SFT loss mask.
"""

from __future__ import annotations

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"

_TEMPLATE = """
{%- for message in messages -%}
  {%- if message['content'] is string -%}
    {%- set text = message['content'] -%}
  {%- else -%}
    {%- set acc = namespace(text='') -%}
    {%- for part in message['content'] -%}
      {%- if part['type'] == 'text' -%}
        {%- set acc.text = acc.text + part['text'] -%}
      {%- elif part['type'] in ['image', 'image_url'] -%}
        @IMAGE@
      {%- endif -%}
    {%- endfor -%}
    {%- set text = acc.text -%}
  {%- endif -%}
  {{- '<|im_start|>' + message['role'] + '\\n' -}}
  {%- if message['role'] == 'assistant' -%}
    {%- generation -%}{{- text + '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}
  {%- else -%}
    {{- text + '<|im_end|>\\n' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""

_IMAGE_PLACEHOLDER = "{%- set acc.text = acc.text + '<image>\\n' -%}"
_IMAGE_REFUSED = "{{- raise_exception('this model takes text only; the message has an image') -}}"


def chatml_template(images: bool) -> str:
    """The ChatML template; with ``images`` an image part becomes ``<image>`` and a newline."""
    return _TEMPLATE.replace("@IMAGE@", _IMAGE_PLACEHOLDER if images else _IMAGE_REFUSED).strip()


TEXT_CHAT_TEMPLATE = chatml_template(images=False)
VISION_CHAT_TEMPLATE = chatml_template(images=True)
