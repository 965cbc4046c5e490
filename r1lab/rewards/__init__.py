"""Rule-based rewards (SPEC §3–§5): plain batched functions behind a registry.

Every reward is ``fn(completions: list[str], examples: list[Example], **options) -> list[float]``
(one score per completion; ``examples[i]`` is the problem ``completions[i]`` answers).
Rules only, no neural reward model (SPEC §4).

Registered here on import: ``accuracy`` (math answers, rewards/math.py), ``format``,
``tag_count``, ``language_consistency``, ``overlong`` (rewards/format.py), and, where those
modules exist, the code and countdown rewards.

A reward may also be any Python callable with that signature, named ``"package.module:function"``
(imported on first use): the seam for a learned reward model (SPEC §5 stage 4). The registered
``reward_model`` reward calls such a function on the final summary (``on: summary``, SPEC §5:
helpfulness) or on the whole response (``on: response``: harmlessness).

A training config names a weighted sum of rewards (SPEC §5: accuracy + format + language
consistency). ``parse_reward_specs`` reads it from YAML, either as ``{"accuracy": 1.0,
"format": 0.1}`` or as a list of ``{name, weight, options}``; ``CombinedReward`` computes
the weighted total and each reward's own scores (for logging).
"""

from __future__ import annotations

import dataclasses
import inspect
import math as _math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

REWARDS: dict[str, Callable[..., list[float]]] = {}


class RewardError(ValueError):
    """A reward configuration problem a user can fix. The message is one line."""


def register_reward(name: str):
    def deco(fn):
        if name in REWARDS:
            raise ValueError(f"reward {name!r} registered twice")
        REWARDS[name] = fn
        return fn
    return deco


def get_reward(name: str) -> Callable[..., list[float]]:
    """The reward function registered as ``name``, or the callable ``"module:function"`` names."""
    if isinstance(name, str) and ":" in name:
        return import_callable(name, "reward")
    try:
        return REWARDS[name]
    except (KeyError, TypeError):
        raise RewardError(f"unknown reward {name!r}; known: {', '.join(sorted(REWARDS))}, "
                          f"or a callable as 'package.module:function'") from None


_IMPORTED: dict[str, Callable] = {}


def import_callable(spec: str, what: str) -> Callable:
    """The callable ``"package.module:function"`` names (cached); a one-line RewardError otherwise."""
    fn = _IMPORTED.get(spec)
    if fn is not None:
        return fn
    import importlib

    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise RewardError(f"{what} {spec!r}: write a callable as 'package.module:function'")
    try:
        mod = importlib.import_module(module)
    except Exception as e:   # noqa: BLE001 — ImportError, or the module's own error: one line
        raise RewardError(f"{what} {spec!r}: cannot import {module!r}: {type(e).__name__}: {e}") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise RewardError(f"{what} {spec!r}: module {module!r} has no {attr!r}")
    if not callable(fn):
        raise RewardError(f"{what} {spec!r}: {attr!r} is not callable")
    _IMPORTED[spec] = fn
    return fn


def _accepted_options(fn: Callable) -> tuple[set[str], bool]:
    """Keyword options ``fn`` takes besides (completions, examples), and whether it takes **kwargs."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """One term of a combined reward: a registered reward, its weight and its options.
    Checked on construction: the name is registered, the weight is a finite number, and
    every option is a keyword the reward function accepts."""

    name: str
    weight: float = 1.0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        fn = get_reward(self.name)
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not _math.isfinite(w):
            raise RewardError(f"reward {self.name!r}: weight must be a finite number, got {self.weight!r}")
        object.__setattr__(self, "weight", float(self.weight))
        if not isinstance(self.options, Mapping):
            raise RewardError(f"reward {self.name!r}: options must be a mapping, got {type(self.options).__name__}")
        names, any_kw = _accepted_options(fn)
        unknown = [k for k in self.options if not isinstance(k, str) or (k not in names and not any_kw)]
        if unknown:
            raise RewardError(f"reward {self.name!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(sorted(names)) or 'none'}")
        object.__setattr__(self, "options", dict(self.options))


_SPEC_KEYS = {"name", "weight", "options"}


def parse_reward_specs(obj: Any) -> list[RewardSpec]:
    """Reward specs from a config value: ``"accuracy"``; ``{"accuracy": 1.0, "format": 0.1}``
    (a value may also be ``{weight, options}``); or a list of names, ``RewardSpec``s,
    ``{name, weight, options}`` dicts or one-key ``{name: weight}`` dicts. Unknown keys are
    errors."""
    if isinstance(obj, (str, RewardSpec)):
        obj = [obj]
    if isinstance(obj, Mapping):
        items = []
        for name, value in obj.items():
            if isinstance(value, Mapping):
                extra = set(value) - {"weight", "options"}
                if extra:
                    raise RewardError(f"reward {name!r}: unknown key(s) {sorted(extra)}; use weight, options")
                items.append({"name": name, **value})
            else:
                items.append({"name": name, "weight": value})
        obj = items
    if not isinstance(obj, Sequence) or not obj:
        raise RewardError(f"rewards must be a name, a {{name: weight}} mapping or a non-empty list, got {obj!r}")
    specs = []
    for item in obj:
        if isinstance(item, RewardSpec):
            specs.append(item)
        elif isinstance(item, str):
            specs.append(RewardSpec(item))
        elif isinstance(item, Mapping) and len(item) == 1 and not set(item) & _SPEC_KEYS:
            specs.extend(parse_reward_specs(dict(item)))      # YAML's "- accuracy: 1.0"
        elif isinstance(item, Mapping):
            extra = set(item) - _SPEC_KEYS
            if extra or "name" not in item:
                raise RewardError(f"reward entry {dict(item)!r}: needs 'name', allows only {sorted(_SPEC_KEYS)}")
            specs.append(RewardSpec(item["name"], item.get("weight", 1.0), item.get("options") or {}))
        else:
            raise RewardError(f"reward entry must be a name or a mapping, got {item!r}")
    return specs


class CombinedReward:
    """Weighted sum of rewards: ``total[i] = Σ weight · reward(completions, examples)[i]``.

    ``__call__(completions, examples, **ctx)`` returns ``(total, per_reward)``, where
    ``per_reward[name]`` holds that reward's unweighted scores. ``ctx`` carries per-call data
    (``num_tokens=[…]``, ``started_in_reasoning=…``); each reward receives the ``ctx`` keys it
    accepts, and its configured options take precedence over them.
    """

    def __init__(self, specs: Any):
        self.specs = parse_reward_specs(specs)
        names = [s.name for s in self.specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise RewardError(f"reward(s) listed twice: {', '.join(dup)}")

    def __call__(self, completions: Sequence[str], examples: Sequence[Any], **ctx: Any
                 ) -> tuple[list[float], dict[str, list[float]]]:
        n = len(completions)
        if len(examples) != n:
            raise RewardError(f"{n} completions but {len(examples)} examples")
        total = [0.0] * n
        per_reward: dict[str, list[float]] = {}
        for spec in self.specs:
            fn = get_reward(spec.name)
            names, any_kw = _accepted_options(fn)
            kwargs = {k: v for k, v in ctx.items() if any_kw or k in names}
            kwargs.update(spec.options)
            scores = [float(s) for s in fn(list(completions), list(examples), **kwargs)]
            if len(scores) != n or not all(_math.isfinite(s) for s in scores):
                raise RewardError(f"reward {spec.name!r} returned {len(scores)} scores (need {n} finite numbers)")
            per_reward[spec.name] = scores
            for i, s in enumerate(scores):
                total[i] += spec.weight * s
        return total, per_reward

    def __repr__(self) -> str:
        return "CombinedReward(" + ", ".join(f"{s.name}×{s.weight:g}" for s in self.specs) + ")"


# Registration happens on import.
from r1lab.rewards import code as _code  # noqa: E402,F401
from r1lab.rewards import countdown as _countdown  # noqa: E402,F401
from r1lab.rewards import format as _format  # noqa: E402,F401
from r1lab.rewards import math as _math_rewards  # noqa: E402,F401
from r1lab.rewards.math import accuracy  # noqa: E402


@register_reward("correct")
def correct_reward(completions: Sequence[str], examples: Sequence[Any], task: Any = None) -> list[float]:
    """The task's own correctness rule (``Task.score``: math-verify for math, tests for code,
    exact integers for arithmetic, the expression for countdown). The trainer passes ``task``."""
    if task is None:
        raise RewardError("reward 'correct' needs the task (the trainer passes it); use 'accuracy' for math answers")
    return [float(s) for s in task.score(list(completions), list(examples))]


@register_reward("reward_model")
def reward_model_reward(completions: Sequence[str], examples: Sequence[Any], fn: str | None = None,
                        on: str = "summary", started_in_reasoning: bool = True) -> list[float]:
    """A learned (or any) scorer plugged in by name: ``fn`` is ``"package.module:function"``
    taking ``(texts, examples)`` and returning one number per text. ``on: summary`` scores the
    answer after ``</think>`` (SPEC §5 stage 4: helpfulness), ``on: response`` the whole
    completion (harmlessness)."""
    from ..reasoning import split_reasoning

    if fn is None:
        raise RewardError("reward 'reward_model' needs the option fn: 'package.module:function'")
    if on not in ("summary", "response"):
        raise RewardError(f"reward 'reward_model': option on must be summary or response, got {on!r}")
    scorer = import_callable(fn, "reward_model fn")
    texts = [split_reasoning(c, started_in_reasoning)[1] if on == "summary" else c for c in completions]
    return [float(x) for x in scorer(texts, list(examples))]


__all__ = ["REWARDS", "RewardError", "RewardSpec", "CombinedReward", "register_reward", "get_reward",
           "parse_reward_specs", "accuracy"]
