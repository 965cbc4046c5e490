"""Inference engine: paged KV cache (cache.py), sampling (sampler.py), scheduler (engine.py). Issue 5."""

from .cache import CacheError, CacheLayout, PagedKVCache
from .engine import CompletionOutput, Engine, EngineConfig, EngineError, RequestOutput, StreamDelta
from .sampler import SamplingError, SamplingParams

__all__ = ["CacheError", "CacheLayout", "PagedKVCache", "CompletionOutput", "Engine", "EngineConfig", "EngineError",
           "RequestOutput", "StreamDelta", "SamplingError", "SamplingParams"]
