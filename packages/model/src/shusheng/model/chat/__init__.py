"""Chat templates: render OpenAI-style conversations to text or token ids, and parse model replies.

Built-in templates: ``internlm2`` (with InternLM2's native plugin / code-interpreter protocol), ``llama3`` and
``chatml``. Add one with ``register_template``.
"""

from shusheng.model.chat.internlm2 import InternLM2Template
from shusheng.model.chat.messages import ParsedMessage
from shusheng.model.chat.templates import (
    ChatMLTemplate,
    Llama3Template,
    Segment,
    Template,
    get_template,
    list_templates,
    parse,
    register_template,
    render,
    render_ids,
)

for _template in (InternLM2Template(), Llama3Template(), ChatMLTemplate()):
    register_template(_template)

__all__ = [
    "ChatMLTemplate",
    "InternLM2Template",
    "Llama3Template",
    "ParsedMessage",
    "Segment",
    "Template",
    "get_template",
    "list_templates",
    "parse",
    "register_template",
    "render",
    "render_ids",
]
