"""Offline batch inference: `pipe = pipeline(path, **engine_options)`, then `pipe(prompts_or_conversations, sampling)`.

A prompt is a string, a list of token ids, or a conversation (a list of OpenAI-style message dicts), which is
rendered with the checkpoint's chat template (`shusheng.model.chat`) and generation prompt.
"""

from __future__ import annotations

from typing import Any

from shusheng.model.chat import list_templates, render

from .config import EngineConfig
from .llm_engine import LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams
from .tensor_parallel import TPEngine, build_engine


def _is_conversation(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(m, dict) for m in x)


def _is_ids(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) for t in x)


class Pipeline:
    def __init__(self, engine: LLMEngine, chat_template: str | None = None):
        self.engine = engine
        self.chat_template = chat_template or engine.tokenizer.chat_template

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        if self.chat_template is None:
            raise ValueError(
                "the checkpoint's tokenizer names no chat template, so conversations cannot be rendered; pass "
                f"chat_template= one of {list_templates()} to pipeline()"
            )
        return render(self.chat_template, messages, tools=tools, add_generation_prompt=True)

    def __call__(
        self,
        inputs: str | list[int] | list[dict] | list,
        sampling: SamplingParams | dict | list[SamplingParams] | None = None,
        tools: list[dict] | None = None,
    ) -> RequestOutput | list[RequestOutput]:
        """Generate for one input or a list of them.

        Args:
            inputs: a prompt string, token ids, a conversation, or a list of any of these.
            sampling: SamplingParams (or a dict of its fields), one for all or one per input; default greedy-free
                defaults of SamplingParams.
            tools: OpenAI `tools` declared to every conversation.

        Returns:
            One RequestOutput for a single input, else a list in input order.
        """
        single = isinstance(inputs, str) or _is_ids(inputs) or _is_conversation(inputs)
        items = [inputs] if single else list(inputs)
        if not items:
            raise ValueError("no inputs given")
        prompts = [self.render(x, tools) if _is_conversation(x) else x for x in items]
        for i, p in enumerate(prompts):
            if not (isinstance(p, str) or _is_ids(p)):
                raise ValueError(f"input {i} is not a string, a list of token ids or a list of message dicts")
        if isinstance(sampling, dict):
            sampling = SamplingParams(**sampling)
        outputs = self.engine.generate(prompts, sampling)
        return outputs[0] if single else outputs

    def shutdown(self) -> None:
        """Stops the worker processes of a tensor-parallel engine (also done at exit); nothing on one device."""
        if isinstance(self.engine, TPEngine):
            self.engine.shutdown()


def pipeline(path: str, chat_template: str | None = None, **engine_options) -> Pipeline:
    """An offline pipeline over the checkpoint folder `path`.

    Args:
        path: checkpoint folder (config.json, weights, tokenizer files).
        chat_template: template for conversations; default the one the tokenizer names.
        **engine_options: EngineConfig fields (device, dtype, max_num_seqs, gpu_memory_utilization,
            tensor_parallel_size, ...).
    """
    return Pipeline(build_engine(EngineConfig.from_kwargs(path, **engine_options)), chat_template)
