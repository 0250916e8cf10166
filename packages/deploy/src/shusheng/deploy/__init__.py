"""shusheng.deploy: a paged-KV, continuous-batching inference engine with Triton kernels and an offline pipeline.

    from shusheng.deploy import pipeline, SamplingParams
    pipe = pipeline("path/to/checkpoint")
    print(pipe("Hello", SamplingParams(max_tokens=32)).outputs[0].text)
"""

from .async_engine import AsyncEngine, RequestStream
from .config import EngineConfig
from .llm_engine import LLMEngine
from .outputs import CompletionOutput, RequestOutput
from .pipeline import Pipeline, pipeline
from .sampling_params import SamplingParams
from .tensor_parallel import TPEngine, build_engine

__all__ = [
    "AsyncEngine",
    "CompletionOutput",
    "EngineConfig",
    "LLMEngine",
    "Pipeline",
    "RequestOutput",
    "RequestStream",
    "SamplingParams",
    "TPEngine",
    "build_engine",
    "pipeline",
]
__version__ = "0.1.0"
