"""The thinking budget in the engine (issue 14): ``SamplingParams.max_reasoning_tokens``.

Once a completion has written the budget's worth of tokens inside ``<think>`` … ``</think>``
the engine forces ``"\\n</think>\\n\\n"`` (engine.py, "Thinking budget") and the model then
writes its answer. Checked on the shipped ``r1zero-base`` (greedy, so the budgeted output
can be compared token by token with the unbudgeted one) and on a tiny random model whose
``<think>``/``</think>`` logits are raised so sampled completions open and close their
thinking by themselves at random points (each of n samples with its own count).
"""

import pytest
import torch

from r1lab import build_model, load_tokenizer, preset
from r1lab.engine import Engine, EngineConfig, SamplingError, SamplingParams
from r1lab.engine.engine import FORCED_CLOSE
from r1lab.reasoning import split_reasoning
from r1lab.tokenizer import END_THINK, THINK

# the shipped base was pre-trained on "question <think> worked solution </think> <answer> a </answer>";
# given the solution's first running value it reasons for 16 tokens (measured, greedy); after a bare
# "<think>" it mostly closes at once (" </think> <answer> …")
QUESTION = "digit sum of 2221330220 mod 4"
REASONING_PROMPTS = [QUESTION + " <think> 2", "digit sum of 2223022203 mod 4 <think> 2"]


@pytest.fixture(scope="module")
def shipped():
    from r1lab.checkpoint import load_model
    return load_model("r1zero-base"), load_tokenizer("r1zero-base")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tags(tok):
    return tok.encode(THINK)[0], tok.encode(END_THINK)[0], tok.encode(FORCED_CLOSE)


@pytest.fixture(scope="module")
def chatty(tags):
    """A tiny random V3 (one MTP depth) whose lm_head bias makes <think> and </think> likely
    (≈ 2 % and 4 % a token), so sampled completions enter and leave reasoning on their own."""
    model = build_model(preset("tiny"), seed=0).eval()
    bias = torch.zeros(model.config.vocab_size)
    bias[tags[0]], bias[tags[1]] = 3.8, 4.5
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model


def engine(model, tok, **kw):
    kw = {"kv_cache_bytes": 4 << 20, "block_size": 4, "prefill_chunk": 8, **kw}
    return Engine(model, tok, EngineConfig(**kw))


def opens(prompt_ids, tags):
    """The prompt left a <think> open (its last tag token is <think>)."""
    last = [t for t in prompt_ids if t in tags[:2]]
    return bool(last) and last[-1] == tags[0]


def replay(ids, starts_in, budget, tags):
    """The rule, replayed on a finished completion's token ids: (reasoning tokens, budget hit,
    positions of forced tokens). Asserts the forced text stands exactly where the count hit the
    budget, unless the model closed its thinking by itself right there."""
    think, end, close = tags
    inside, count, hit, forced, i = starts_in, 0, False, [], 0
    while i < len(ids):
        if budget is not None and inside and count >= budget and ids[i] != end:
            got = ids[i: i + len(close)]
            assert got == close[: len(got)], f"expected the forced close at {i}, got {got}"
            forced += range(i, i + len(got))
            hit, inside, i = True, False, i + len(got)
            continue
        t = ids[i]
        if inside:
            if t == end:
                inside = False
            else:
                count += 1
        elif t == think:
            inside = True
        i += 1
    return count, hit, forced


def training_logprobs(model, prompt_ids, token_ids):
    with torch.no_grad():
        full = torch.tensor([prompt_ids + token_ids])
        lp = torch.log_softmax(model(full).logits.float(), -1)[0, len(prompt_ids) - 1: -1]
    return lp.gather(1, torch.tensor(token_ids)[:, None]).squeeze(1)


def assert_logprobs_exact(model, out):
    """Within float rounding (relative: a forced token's log-prob can be -20 where the model disagrees)."""
    for c in out.outputs:
        want = training_logprobs(model, out.prompt_token_ids, c.token_ids)
        torch.testing.assert_close(torch.tensor(c.logprobs), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- parameters
@pytest.mark.parametrize("bad", [-1, 1.5, True, "8", float("nan")])
def test_bad_budget_values(bad):
    with pytest.raises(SamplingError, match="max_reasoning_tokens must be a non-negative integer or None"):
        SamplingParams(max_reasoning_tokens=bad)
    assert SamplingParams(max_reasoning_tokens=0).max_reasoning_tokens == 0
    assert SamplingParams().max_reasoning_tokens is None


class SplitTags:
    """A tokenizer that spells <think> as two tokens (no single id to watch for)."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def encode(self, text, **kw):
        return [229, 5] if text == THINK else self._tok.encode(text, **kw)


def test_budget_needs_a_tokenizer_with_tag_tokens(chatty, tok):
    p = SamplingParams(max_reasoning_tokens=4, max_tokens=5)
    for eng, why in ((engine(chatty, None), "has none"), (engine(chatty, SplitTags(tok)), "one token each")):
        with pytest.raises(SamplingError, match=f"max_reasoning_tokens needs a tokenizer.*{why}") as e:
            eng.generate([[5, 17, 300]], p)
        assert "\n" not in str(e.value) and not eng.requests and not eng.has_unfinished()
        (out,) = eng.generate([[5, 17, 300]], SamplingParams(max_tokens=5, seed=0))   # no budget: fine
        assert out.outputs[0].reasoning_tokens == 0 and not out.outputs[0].reasoning_budget_hit


# ----------------------------------------------------------------------- the shipped base
@pytest.mark.parametrize("spec", [False, True])
def test_budget_cuts_the_reasoning_and_the_model_answers(shipped, spec):
    model, btok = shipped
    end, close = btok.encode(END_THINK)[0], btok.encode(FORCED_CLOSE)
    eng = engine(model, btok, spec_mtp=spec)
    free = SamplingParams(temperature=0, max_tokens=60, logprobs=1)
    refs = [o.outputs[0] for o in eng.generate(REASONING_PROMPTS, free)]
    thought = [r.token_ids.index(end) for r in refs]   # the model's own reasoning lengths (16)
    assert all(r.reasoning_tokens == t >= 5 and not r.reasoning_budget_hit for r, t in zip(refs, thought))
    cases = [(k, b) for k, t in enumerate(thought) for b in (0, 1, 4, t - 1, t)]
    outs = eng.generate([REASONING_PROMPTS[k] for k, _ in cases],        # one batch: continuous batching
                        [SamplingParams(temperature=0, max_tokens=60, logprobs=1, max_reasoning_tokens=b)
                         for _, b in cases])
    for (k, budget), out in zip(cases, outs):
        r, c = refs[k], out.outputs[0]
        assert_logprobs_exact(model, out)
        if budget >= thought[k]:   # a budget the model stays within changes nothing
            assert (c.token_ids, c.reasoning_tokens, c.reasoning_budget_hit) == (r.token_ids, thought[k], False)
            continue
        assert c.token_ids[:budget] == r.token_ids[:budget]            # the model's own reasoning, cut
        assert c.token_ids[budget: budget + len(close)] == close       # then the forced close
        answer_ids = c.token_ids[budget + len(close):]
        assert len(answer_ids) >= 3 and c.finish_reason == "stop"      # and the model answers by itself
        assert c.reasoning_tokens == budget and c.reasoning_budget_hit
        assert c.sampling_logprobs[budget: budget + len(close)] == [0.0] * len(close)
        reasoning, answer = split_reasoning(c.text)
        assert reasoning == btok.decode(r.token_ids[:budget]).strip()
        assert answer == btok.decode(answer_ids[:-1]).strip() and answer   # EOS left out of the text
        # the forced tokens are not what the model would have picked: their logprobs are its own
        assert min(c.logprobs[budget: budget + len(close)]) < -1
    assert eng.cache.free_blocks() == eng.cache.num_blocks


def test_where_reasoning_starts(shipped):
    """Text and token-id prompts: in reasoning when the last <think> is not closed; a plain prompt
    enters reasoning when the model writes <think>; a closed <think> leaves nothing to cut."""
    model, btok = shipped
    eng = engine(model, btok)
    budget0 = SamplingParams(temperature=0, max_tokens=40, max_reasoning_tokens=0)
    ids = [btok.bos_token_id] + btok.encode(QUESTION + " <think>")
    by_text, by_ids = eng.generate([QUESTION + " <think>", ids], budget0)
    assert by_text.prompt_token_ids == ids
    assert eng.opens_reasoning(ids) and not eng.opens_reasoning(ids + btok.encode(" 2 </think>"))
    assert not eng.opens_reasoning(ids[:-1]) and eng.opens_reasoning(btok.encode("<think> </think> <think> 1"))
    assert by_text.outputs[0].token_ids == by_ids.outputs[0].token_ids
    assert by_ids.outputs[0].text.startswith(FORCED_CLOSE) and by_ids.outputs[0].reasoning_budget_hit
    # plain question: the base writes " <think> </think> <answer> …"; budget 0 closes right after its <think>
    (free,) = eng.generate([QUESTION], SamplingParams(temperature=0, max_tokens=40))
    assert free.outputs[0].text.startswith(" <think> </think>") and free.outputs[0].reasoning_tokens == 1
    (plain,) = eng.generate([QUESTION], budget0)
    c = plain.outputs[0]
    assert c.text.startswith(" <think>" + FORCED_CLOSE) and c.reasoning_budget_hit and c.reasoning_tokens == 0
    # the prompt closed its thinking: the completion is answer, nothing is forced
    closed = QUESTION + " <think> 2023211311 so the answer is 1 </think>"
    (ref,) = eng.generate([closed], SamplingParams(temperature=0, max_tokens=40))
    (out,) = eng.generate([closed], budget0)
    assert out.outputs[0].token_ids == ref.outputs[0].token_ids and "<answer>" in out.outputs[0].text
    assert out.outputs[0].reasoning_tokens == 0 and not out.outputs[0].reasoning_budget_hit
    # a chat prompt (generation prompt "<｜Assistant｜><think>\n") starts in reasoning
    (chat,) = eng.generate([[{"role": "user", "content": QUESTION}]], budget0)
    assert chat.outputs[0].text.startswith(FORCED_CLOSE)


def test_stop_strings_and_max_tokens_apply_to_forced_tokens(shipped):
    model, btok = shipped
    eng = engine(model, btok)
    prompt, budget = REASONING_PROMPTS[0], 5
    base = dict(temperature=0, max_tokens=60, max_reasoning_tokens=budget)
    (full,) = eng.generate([prompt], SamplingParams(**base))
    ids = full.outputs[0].token_ids
    (out,) = eng.generate([prompt], SamplingParams(**base, stop=[END_THINK]))
    c = out.outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == END_THINK
    assert c.token_ids == ids[: budget + 2] and c.text == btok.decode(ids[:budget]) + "\n"
    (out,) = eng.generate([prompt], SamplingParams(**{**base, "max_tokens": budget + 1}))
    c = out.outputs[0]
    assert c.finish_reason == "length" and c.token_ids == ids[: budget + 1] and c.reasoning_budget_hit
    # a stop string inside the model's answer after the forced close
    answer = btok.decode(ids[budget + 4:])
    word = answer.split()[1]
    (out,) = eng.generate([prompt], SamplingParams(**base, stop=[word]))
    c = out.outputs[0]
    assert c.stop_reason == word and c.text == btok.decode(ids).split(word)[0]


def test_budget_none_is_the_engine_without_the_feature(chatty, tok, monkeypatch):
    """Budget None: the same tokens, logprobs and draws as an engine that tracks no reasoning at all."""
    chat = [{"role": "user", "content": "hi"}]
    prompts = [chat, [5, 17, 300, 41], "The answer is"]
    p = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_tokens=30, seed=7, logprobs=2)
    for spec in (False, True):
        with_feature = engine(chatty, tok, spec_mtp=spec).generate(prompts, p)
        with monkeypatch.context() as mp:
            mp.setattr("r1lab.engine.engine._reasoning_tags", lambda tokenizer: None)
            without = engine(chatty, tok, spec_mtp=spec).generate(prompts, p)
        key = lambda outs: [[(c.token_ids, c.logprobs, c.sampling_logprobs, c.top_logprobs, c.text)  # noqa: E731
                             for c in o.outputs] for o in outs]
        assert key(with_feature) == key(without)
        assert any(c.reasoning_tokens > 0 for o in with_feature for c in o.outputs)   # counted all the same
        assert not any(c.reasoning_budget_hit for o in with_feature for c in o.outputs)


# ----------------------------------------------------------------------- n > 1, batching, spec, streaming
@pytest.mark.parametrize("spec", [False, True])
def test_each_sample_has_its_own_count(chatty, tok, tags, spec):
    chat = [{"role": "user", "content": "hi"}]
    reqs = [(chat, SamplingParams(n=6, temperature=1.0, max_tokens=40, seed=1, max_reasoning_tokens=6, logprobs=1)),
            ([5, 17, 300, 41], SamplingParams(n=4, temperature=1.0, max_tokens=40, seed=2, max_reasoning_tokens=2)),
            ([9] * 11, SamplingParams(n=2, temperature=0.8, top_p=0.95, max_tokens=30, seed=3,
                                      max_reasoning_tokens=0)),
            (chat, SamplingParams(n=3, temperature=1.0, max_tokens=30, seed=4))]      # no budget, batched along
    eng = engine(chatty, tok, spec_mtp=spec, max_num_seqs=12)
    rids = [eng.add_request(*reqs[0]), eng.add_request(*reqs[1])]
    for _ in range(3):
        eng.step()
    rids += [eng.add_request(*r) for r in reqs[2:]]   # admitted while the first two decode
    while eng.has_unfinished():
        eng.step()
    outs = [eng.output(r, release=True) for r in rids]
    seen = {"hit": 0, "closed itself": 0, "forced twice": 0}
    for (prompt, p), out in zip(reqs, outs):
        starts_in = opens(out.prompt_token_ids, tags)
        assert starts_in == (prompt is not reqs[2][0])     # chat, and the ids [5, …] (5 is <think>)
        assert_logprobs_exact(chatty, out)
        for c in out.outputs:
            count, hit, forced = replay(c.token_ids, starts_in, p.max_reasoning_tokens, tags)
            assert (c.reasoning_tokens, c.reasoning_budget_hit) == (count, hit)
            assert all(c.sampling_logprobs[i] == 0.0 for i in forced)
            seen["hit"] += hit
            seen["closed itself"] += (not hit and tags[1] in c.token_ids)
            seen["forced twice"] += len(forced) > len(tags[2])
    # the seeds give every case: cut by the budget, closed by the model, re-opened and closed again
    assert all(v > 0 for v in seen.values()), seen
    assert len({c.reasoning_tokens for c in outs[0].outputs}) > 1
    assert not any(c.reasoning_budget_hit for c in outs[3].outputs)
    # each request alone gives the same completions (seeded; the batch does not leak into a sample's count)
    for (prompt, p), out in zip(reqs, outs):
        (solo,) = engine(chatty, tok, spec_mtp=spec).generate([prompt], p)
        assert [c.token_ids for c in solo.outputs] == [c.token_ids for c in out.outputs]
    assert eng.cache.free_blocks() == eng.cache.num_blocks


def test_spec_mtp_greedy_identical_with_a_budget(shipped):
    """The forced token stands in for the MTP draft: greedy speculative output equals plain output
    (forcing beginning at either of a step's two tokens), and real drafts are still counted."""
    model, btok = shipped
    prompts = REASONING_PROMPTS + [[{"role": "user", "content": QUESTION}]]
    for budget in (1, 2, 3, 6):
        p = SamplingParams(temperature=0, max_tokens=50, max_reasoning_tokens=budget, logprobs=2)
        plain = engine(model, btok).generate(prompts, p)
        eng = engine(model, btok, spec_mtp=True)
        spec = eng.generate(prompts, p)
        assert [(o.outputs[0].token_ids, o.outputs[0].reasoning_tokens) for o in spec] == \
            [(o.outputs[0].token_ids, o.outputs[0].reasoning_tokens) for o in plain]
        for a, b in zip(spec, plain):
            assert [list(t) for t in a.outputs[0].top_logprobs] == [list(t) for t in b.outputs[0].top_logprobs]
            assert_logprobs_exact(model, a)
        forced = sum(o.outputs[0].reasoning_budget_hit for o in spec) * len(btok.encode(FORCED_CLOSE))
        total = sum(len(o.outputs[0].token_ids) - 1 for o in spec)   # first tokens come from the prefill
        assert eng.spec_drafted <= total - forced + len(prompts)     # forced tokens are not drafts


def test_stream_carries_the_budget_state(chatty, tok):
    chat = [{"role": "user", "content": "hi"}]
    p = SamplingParams(n=3, temperature=1.0, max_tokens=30, seed=5, max_reasoning_tokens=4, stop=["zz"])
    eng = engine(chatty, tok)
    (want,) = eng.generate([chat], p)
    got = {}
    for d in eng.stream([chat], p):
        ids, text, last = got.get(d.index, ([], "", None))
        got[d.index] = (ids + d.token_ids, text + d.text, d)
    for c in want.outputs:
        ids, text, last = got[c.index]
        assert (ids, text) == (c.token_ids, c.text)
        assert last.finish_reason == c.finish_reason
        assert (last.reasoning_tokens, last.reasoning_budget_hit) == (c.reasoning_tokens, c.reasoning_budget_hit)
    assert any(c.reasoning_budget_hit for c in want.outputs)


def test_spec_mtp_forced_tokens_are_the_drafts(shipped):
    """While forcing, the forced token is the step's draft: two forced tokens a step, and no
    draft counted (acceptance figures stay those of real MTP drafts)."""
    model, btok = shipped
    budget, close = 3, btok.encode(FORCED_CLOSE)
    eng = engine(model, btok, spec_mtp=True)
    rid = eng.add_request(REASONING_PROMPTS[0], SamplingParams(temperature=0, max_tokens=60,
                                                               max_reasoning_tokens=budget))
    tokens = lambda: sum(len(o.token_ids) for o in eng.output(rid).outputs)  # noqa: E731
    steps = []   # (tokens before, tokens after, drafts counted) per step
    while eng.has_unfinished():
        before, drafted = tokens(), eng.spec_drafted
        eng.step()
        steps.append((before, tokens(), eng.spec_drafted - drafted))
    c = eng.output(rid).outputs[0]
    assert c.token_ids[budget: budget + len(close)] == close and c.reasoning_budget_hit
    # steps that start with forced tokens still to commit (the first one went in as the boundary's token)
    forcing = [s for s in steps if budget < s[0] < budget + len(close)]
    assert forcing and all(after - before == 2 and drafted == 0 for before, after, drafted in forcing)
    assert sum(d for *_, d in steps) > 0   # the steps around them drafted as usual
