"""Pluggable rewards (issue 15 item 3; SPEC §5 stage 4): any callable named 'module:function',
and ``reward_model`` scoring the summary after </think> or the whole response."""

from __future__ import annotations

import textwrap

import pytest

from r1lab.rewards import CombinedReward, RewardError, RewardSpec


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_rm.py").write_text(textwrap.dedent('''
        seen = []

        def length_reward(completions, examples, scale=1.0):
            return [scale * len(c) for c in completions]

        def judge(texts, examples):
            seen.append(list(texts))
            return [1.0 if "please" in t else -1.0 for t in texts]

        not_callable = 3
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys
    sys.modules.pop("my_rm", None)
    return importlib.import_module("my_rm")


def test_a_callable_by_name_is_a_reward_with_weight_and_options(plugin):
    r = CombinedReward({"my_rm:length_reward": {"weight": 0.5, "options": {"scale": 2.0}}, "format": 0.0})
    total, per = r(["abcd", "ab"], [{}, {}])
    assert per["my_rm:length_reward"] == [8.0, 4.0] and total == [4.0, 2.0]
    with pytest.raises(RewardError, match="unknown option"):
        RewardSpec("my_rm:length_reward", options={"nope": 1})


def test_reward_model_on_summary_or_response(plugin):
    completions = ["please think</think>the answer, thanks", "plain thought</think>answer, please"]
    r = CombinedReward([{"name": "reward_model", "options": {"fn": "my_rm:judge", "on": "summary"}}])
    total, _ = r(completions, [{}, {}])
    assert total == [-1.0, 1.0] and plugin.seen[-1] == ["the answer, thanks", "answer, please"]
    r = CombinedReward([{"name": "reward_model", "options": {"fn": "my_rm:judge", "on": "response"}}])
    total, _ = r(completions, [{}, {}])
    assert total == [1.0, 1.0] and plugin.seen[-1] == completions


@pytest.mark.parametrize("name, needle", [
    ("no_such_module_xyz:f", "cannot import"), ("my_rm:missing", "has no"), ("my_rm:not_callable", "not callable"),
    (":f", "package.module:function"),
])
def test_bad_callables_are_one_line_errors(plugin, name, needle):
    with pytest.raises(RewardError, match=needle) as e:
        CombinedReward({name: 1.0})
    assert "\n" not in str(e.value)


def test_reward_model_options_are_checked(plugin):
    r = CombinedReward([{"name": "reward_model", "options": {"fn": "my_rm:judge", "on": "title"}}])
    with pytest.raises(RewardError, match="summary or response"):
        r(["a</think>b"], [{}])


def test_grpo_recipe_accepts_language_and_plugged_rewards(plugin):
    from r1lab.train.config import load_recipe
    from r1lab.train.grpo import GRPOConfig

    cfg = load_recipe(None, GRPOConfig, ["rewards={correct: 1.0, language_consistency: 0.1, 'my_rm:length_reward': 0.0}"])
    assert set(cfg.rewards) == {"correct", "language_consistency", "my_rm:length_reward"}
    with pytest.raises(Exception, match="cannot import"):
        load_recipe(None, GRPOConfig, ["rewards={'nope_mod_q:f': 1.0}"])
