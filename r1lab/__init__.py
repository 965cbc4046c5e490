"""r1lab: build, train, evaluate, distill and serve DeepSeek-R1-style reasoning models."""

__version__ = "0.1.0"

from .config import ConfigError, ModelConfig, preset  # noqa: E402
from .model import build_model  # noqa: E402


def __getattr__(name):  # lazy: keep `import r1lab` light
    import importlib
    import importlib.util

    # every submodule (r1lab.rewards, r1lab.tasks, r1lab.eval, ...) is an attribute, imported on first use
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    if name in ("load_model", "save_model"):
        from . import checkpoint

        return getattr(checkpoint, name)
    if name in ("load_tokenizer", "train_tokenizer", "render_chat", "TokenizerError"):
        from . import tokenizer

        return getattr(tokenizer, name)
    if name in ("split_reasoning", "extract_answer", "ReasoningStreamParser"):
        from . import reasoning

        return getattr(reasoning, name)
    if name in ("Engine", "EngineConfig", "SamplingParams", "SamplingError"):
        from . import engine

        return getattr(engine, name)
    if name in ("evaluate", "EvalError"):
        from . import eval as _eval

        return getattr(_eval, name)
    if name in ("get_task", "Task", "Example"):
        from . import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module 'r1lab' has no attribute {name!r}")


__all__ = ["ConfigError", "ModelConfig", "preset", "build_model", "load_model", "save_model", "load_tokenizer",
           "train_tokenizer", "render_chat", "TokenizerError", "split_reasoning", "extract_answer",
           "ReasoningStreamParser", "Engine", "EngineConfig", "SamplingParams", "SamplingError", "evaluate", "EvalError", "get_task", "Task", "Example",
           "__version__"]
