"""Rule-based rewards (SPEC §3–§5): plain batched functions behind a registry.

Every reward is ``fn(completions: list[str], examples: list[Example], **options) -> list[float]``.
"""

from __future__ import annotations

REWARDS: dict = {}


class RewardError(ValueError):
    """A reward configuration problem a user can fix. The message is one line."""


def register_reward(name: str):
    def deco(fn):
        if name in REWARDS:
            raise ValueError(f"reward {name!r} registered twice")
        REWARDS[name] = fn
        return fn
    return deco
