"""The inference engine (issue 5): sampling, paged cache, scheduler; exactness against
transformers and against the training forward (SPEC §2, §3)."""

import itertools
import logging

import pytest
import torch

from r1lab import build_model, load_tokenizer, preset, save_model
from r1lab.engine import (
    CacheError, CacheLayout, Engine, EngineConfig, EngineError, PagedKVCache, SamplingError, SamplingParams,
)
from r1lab.engine.sampler import make_generator, sample


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def v3_cfg():
    return preset("tiny")  # vocabulary of the shipped tokenizer, one MTP layer


def qwen_cfg():
    return preset("qwen2-1.5b").replace(vocab_size=2048, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


@pytest.fixture(scope="module")
def v3():
    return build_model(v3_cfg(), seed=0).eval()


def engine(model, tok, **kw):
    kw = {"kv_cache_bytes": 2 << 20, "block_size": 4, "prefill_chunk": 8, **kw}
    return Engine(model, tok, EngineConfig(**kw))


PROMPTS = [[5, 17, 300, 41], list(range(100, 123)), [9] * 11, [1000, 1001]]


# ----------------------------------------------------------------------- sampling
@pytest.mark.parametrize("kw, word", [
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"), ({"max_tokens": 0}, "max_tokens"), ({"top_k": -2}, "top_k"), ({"min_p": 1.5}, "min_p"),
    ({"temperature": float("nan")}, "temperature"), ({"seed": -1}, "seed"), ({"logprobs": -1}, "logprobs"),
    ({"stop": [""]}, "stop"),
])
def test_bad_sampling_params(kw, word):
    with pytest.raises(SamplingError, match=word):
        SamplingParams(**kw)
    assert issubclass(SamplingError, ValueError)


def test_max_tokens_over_context_is_an_error(v3, tok):
    with pytest.raises(SamplingError, match="max_tokens"):
        engine(v3, tok).generate([[1, 2, 3]], SamplingParams(max_tokens=v3.config.max_position_embeddings + 1))


def test_sampler_rows_are_independent_and_exact():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    greedy = SamplingParams(temperature=0)
    p = [greedy, SamplingParams(top_k=1), SamplingParams(top_p=1e-6), SamplingParams(temperature=0.7),
         SamplingParams(top_k=5, top_p=0.9, min_p=0.05), SamplingParams(temperature=1.3)]
    gens = [make_generator(3, i) for i in range(6)]
    r = sample(logits, p, gens, top_logprobs=3)
    raw = torch.log_softmax(logits, -1)
    assert (r.token_ids[:3] == logits[:3].argmax(-1)).all()
    assert torch.equal(r.logprobs, raw.gather(1, r.token_ids[:, None]).squeeze(1))
    assert torch.equal(r.top_logprobs, raw.topk(3, -1).values)
    assert torch.allclose(r.sampling_logprobs[1:3], torch.zeros(2))  # a one-token distribution
    top5 = logits[4].topk(5).indices
    # the same row alone, with a fresh generator of the same seed, draws the same token
    for i in range(3, 6):
        alone = sample(logits[i:i + 1], [p[i]], [make_generator(3, i)])
        assert alone.token_ids.item() == r.token_ids[i].item()
    assert r.token_ids[4] in top5
    # empirical frequencies follow softmax(logits / T)
    many = torch.stack([sample(logits[3:4], [p[3]], [gens[3]]).token_ids[0] for _ in range(3000)])
    freq = torch.bincount(many, minlength=50).float() / 3000
    assert (freq - torch.softmax(logits[3] / 0.7, -1)).abs().max() < 0.04


# ----------------------------------------------------------------------- cache
def test_cache_bytes_per_token_and_budget():
    cfg = v3_cfg()
    layout = CacheLayout.from_config(cfg)
    layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
    assert layout.bytes_per_token(torch.float32) == (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * layers * 4
    assert layout.bytes_per_token(torch.bfloat16) == (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * layers * 2
    q = qwen_cfg()
    assert CacheLayout.from_config(q).bytes_per_token(torch.float32) == 2 * q.kv_heads * q.dense_head_dim * 2 * 4
    c = PagedKVCache.from_budget(cfg, 100_000, 8, torch.float32)
    assert c.capacity_bytes <= 100_000 < c.capacity_bytes + 8 * c.bytes_per_token
    assert c.a.numel() * 4 + c.b.numel() * 4 == c.capacity_bytes
    with pytest.raises(CacheError, match="less than one block"):
        PagedKVCache.from_budget(cfg, 100, 8, torch.float32)


# ----------------------------------------------------------------------- exactness
@pytest.mark.parametrize("which", ["v3", "qwen2"])
def test_greedy_equals_transformers(which, tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    cfg = v3_cfg() if which == "v3" else qwen_cfg()
    ours = build_model(cfg, seed=1).eval()
    save_model(ours, tmp_path / "ck")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck", dtype=torch.float32).eval()
    new = 12
    outs = engine(ours, tok).generate(PROMPTS, SamplingParams(temperature=0, max_tokens=new))
    for prompt, out in zip(PROMPTS, outs):
        ids = torch.tensor([prompt])
        ref = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(prompt):]
        assert out.outputs[0].token_ids == ref.tolist()


@pytest.mark.parametrize("which", ["v3", "qwen2"])
def test_logprobs_equal_training_forward(which, tok):
    cfg = v3_cfg() if which == "v3" else qwen_cfg()
    model = build_model(cfg, seed=2)
    outs = engine(model, tok).generate(PROMPTS[:3], SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=5,
                                                                  logprobs=2))
    with torch.no_grad():
        for prompt, out in zip(PROMPTS, outs):
            for c in out.outputs:
                full = torch.tensor([prompt + c.token_ids])
                lp = torch.log_softmax(model(full).logits.float(), -1)[0, len(prompt) - 1: -1]
                want = lp.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
                assert (torch.tensor(c.logprobs) - want).abs().max().item() < 1e-5
                best = lp.topk(2, -1)
                assert list(c.top_logprobs[0]) == best.indices[0].tolist()
    assert model.training  # the engine restores the caller's mode


@pytest.fixture()
def two_threads():
    """Batch independence is bitwise only for one kernel configuration: matmuls of different
    row counts may round differently with another thread count (measured: 1 thread flips a
    near-tie at token 13 of this test). CI and dev machines have 2 cores; pin it."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_seed_reproducible_alone_or_batched(v3, tok, two_threads):
    p = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_tokens=15, seed=123)
    alone = engine(v3, tok).generate([PROMPTS[1]], p)[0]
    others = [SamplingParams(n=2, temperature=0.9, max_tokens=20, seed=7), SamplingParams(temperature=0, max_tokens=3)]
    mixed = engine(v3, tok, block_size=8, prefill_chunk=5).generate(
        [PROMPTS[0], PROMPTS[1], PROMPTS[2]], [others[0], p, others[1]])[1]
    assert [c.token_ids for c in alone.outputs] == [c.token_ids for c in mixed.outputs]
    assert len({tuple(c.token_ids) for c in alone.outputs}) == 3  # the n samples differ
    other_seed = engine(v3, tok).generate([PROMPTS[1]], SamplingParams(n=3, temperature=1.0, top_p=0.95,
                                                                       max_tokens=15, seed=124))[0]
    assert [c.token_ids for c in other_seed.outputs] != [c.token_ids for c in alone.outputs]


# ----------------------------------------------------------------------- stopping
def test_max_tokens_exact(v3, tok):
    for m in (1, 2, 9):
        (out,) = engine(v3, tok).generate([PROMPTS[0]], SamplingParams(temperature=0.8, seed=0, max_tokens=m))
        c = out.outputs[0]
        assert len(c.token_ids) == len(c.logprobs) == m and c.finish_reason == "length"


def test_stop_token_and_stop_string(v3, tok):
    base = SamplingParams(temperature=0, max_tokens=30)
    (ref,) = engine(v3, tok).generate([PROMPTS[1]], base)
    ids = ref.outputs[0].token_ids
    assert tok.eos_token_id not in ids and len(ids) == 30
    k = 6
    stop_id = ids[k]
    (out,) = engine(v3, tok).generate([PROMPTS[1]], SamplingParams(temperature=0, max_tokens=30,
                                                                    stop_token_ids=[stop_id]))
    c = out.outputs[0]
    first = ids.index(stop_id)
    assert c.token_ids == ids[: first + 1] and c.finish_reason == "stop" and c.stop_reason == stop_id
    assert c.text == tok.decode(ids[:first])
    # a stop string: text ends right before its first occurrence (or right after it with include_stop)
    text = tok.decode(ids)
    stop = text[len(text) // 2: len(text) // 2 + 3]
    at = text.find(stop)
    for include in (False, True):
        (out,) = engine(v3, tok).generate([PROMPTS[1]], SamplingParams(temperature=0, max_tokens=30, stop=[stop],
                                                                        include_stop=include))
        c = out.outputs[0]
        assert c.finish_reason == "stop" and c.stop_reason == stop
        assert c.text == text[: at + (len(stop) if include else 0)]
        assert stop in tok.decode(c.token_ids) and stop not in tok.decode(c.token_ids[:-1])


# ----------------------------------------------------------------------- memory budget
def test_many_requests_in_a_small_budget_all_complete(v3, tok):
    eng = engine(v3, tok, kv_cache_bytes=40 * 4 * 1600, max_num_seqs=6)   # 40 blocks of 4 tokens
    total = eng.cache.num_blocks
    assert total == 40
    prompts = [list(range(10, 10 + 3 + i % 9)) for i in range(12)]
    rids = [eng.add_request(p, SamplingParams(n=2, temperature=1.0, seed=i, max_tokens=6 + i % 7))
            for i, p in enumerate(prompts)]
    seen_free, waited = [], False
    while eng.has_unfinished():
        eng.step()
        seen_free.append(eng.cache.free_blocks())
        assert 0 <= seen_free[-1] <= total
        waited |= bool(eng.waiting and eng.running)
    assert waited and min(seen_free) < total // 2  # requests queued while the budget was in use
    for i, r in enumerate(rids):
        out = eng.output(r, release=True)
        assert all(c.finish_reason in ("stop", "length") for c in out.outputs)
        assert all(c.finish_reason == "stop" or len(c.token_ids) == 6 + i % 7 for c in out.outputs)
    assert eng.cache.free_blocks() == total and eng.cache.free_bytes() == eng.cache.capacity_bytes
    assert not eng.requests


def test_request_too_large_for_budget_is_a_clear_error(v3, tok):
    eng = engine(v3, tok, kv_cache_bytes=10 * 4 * 1600)
    with pytest.raises(CacheError, match="kv_cache_bytes"):
        eng.generate([list(range(30))], SamplingParams(n=2, max_tokens=20))
    assert not eng.has_unfinished()


def test_cancel_frees_the_cache(v3, tok):
    eng = engine(v3, tok)
    total = eng.cache.free_blocks()
    rid = eng.add_request(PROMPTS[1], SamplingParams(n=2, max_tokens=50, seed=0))
    keep = eng.add_request(PROMPTS[0], SamplingParams(max_tokens=8, seed=0))
    for _ in range(5):
        eng.step()
    assert eng.cache.free_blocks() < total
    with pytest.raises(EngineError, match="not finished"):
        eng.output(rid, release=True)
    eng.cancel(rid)
    queued = eng.add_request(PROMPTS[2], SamplingParams(n=3, max_tokens=5))
    eng.cancel(queued)  # cancelled while still waiting: never admitted, never holds blocks
    eng.step()
    out = eng.output(rid)
    assert [c.finish_reason for c in out.outputs] == ["cancelled"] * 2
    assert 0 < len(out.outputs[0].token_ids) < 50 and out.outputs[0].text == tok.decode(out.outputs[0].token_ids)
    assert [c.finish_reason for c in eng.output(queued).outputs] == ["cancelled"] * 3
    while eng.has_unfinished():
        eng.step()
    assert eng.output(keep).outputs[0].finish_reason == "length"
    assert eng.cache.free_blocks() == total


# ----------------------------------------------------------------------- scheduling
def record_model_tokens(model):
    """Hook the model's forward: each call appends the absolute positions of the real (not
    padding) new tokens it processes. Returns (list of position tensors, hook handle)."""
    calls = []

    def hook(module, args, kwargs):
        view = kwargs["cache"]
        calls.append(view.positions.flatten()[view.write_src].cpu())

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("spec", [False, True])
def test_n_samples_share_one_prefill(v3, tok, spec):
    prompt, n, new = PROMPTS[1], 4, 6     # 23 prompt tokens: chunks of 8, 8, 7
    calls, hook = record_model_tokens(v3)
    try:
        (out,) = engine(v3, tok, spec_mtp=spec).generate([prompt], SamplingParams(n=n, temperature=1.0,
                                                                                  max_tokens=new, seed=0))
    finally:
        hook.remove()
    pos = torch.cat(calls)
    # every prompt position went through the model exactly once, not once per sample
    assert sorted(pos[pos < len(prompt)].tolist()) == list(range(len(prompt)))
    if not spec:   # then the n samples decode on their own: one token each per step
        assert (pos >= len(prompt)).sum().item() == n * (new - 1)
    assert all(len(c.token_ids) == new for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) == n   # forked, then sampled independently


def test_decode_continues_while_a_long_prompt_is_prefilled(v3, tok, two_threads):
    chunk, short, long = 4, PROMPTS[0], list(range(200, 240))   # the long prompt: 10 chunks
    p = SamplingParams(temperature=0, max_tokens=20)
    solo = [engine(v3, tok, prefill_chunk=chunk).generate([x], p)[0].outputs[0].token_ids for x in (short, long)]
    eng = engine(v3, tok, prefill_chunk=chunk)
    a = eng.add_request(short, p)
    eng.step()          # the short prompt fits one chunk: prefilled, first token sampled
    assert len(eng.output(a).outputs[0].token_ids) == 1
    b = eng.add_request(long, p)
    long_req = eng.requests[b]
    per_step = []       # (prompt tokens of the long request prefilled, tokens the short one gained)
    while long_req.prefilled < len(long):
        before = (long_req.prefilled, len(eng.output(a).outputs[0].token_ids))
        eng.step()
        per_step.append((long_req.prefilled - before[0], len(eng.output(a).outputs[0].token_ids) - before[1]))
    assert per_step == [(chunk, 1)] * (len(long) // chunk)   # one chunk and one decode token every step
    while eng.has_unfinished():
        eng.step()
    assert [eng.output(r).outputs[0].token_ids for r in (a, b)] == solo


# ----------------------------------------------------------------------- prompts and streaming
def test_text_chat_and_stream(v3, tok):
    eng = engine(v3, tok)
    chat = [{"role": "user", "content": "What is 2+2?"}]
    p = SamplingParams(n=2, temperature=0.9, max_tokens=12, seed=3, stop=["e"])
    outs = eng.generate(["The answer is", chat], p)
    assert outs[0].prompt_token_ids == [tok.bos_token_id] + tok.encode("The answer is")   # BOS as in training
    assert outs[1].prompt_token_ids == tok.apply_chat_template(chat, add_generation_prompt=True)
    got = {}
    for d in eng.stream(["The answer is", chat], p):
        tokens, text, reason = got.get((d.request_id, d.index), ([], "", None))
        got[(d.request_id, d.index)] = (tokens + d.token_ids, text + d.text, d.finish_reason)
    streamed = [got[k] for k in sorted(got)]
    full = [(c.token_ids, c.text, c.finish_reason) for o in outs for c in o.outputs]
    assert streamed == full
    assert not eng.has_unfinished() and not eng.requests


def test_bad_engine_config_and_prompts(v3, tok):
    with pytest.raises(EngineError, match="block_size"):
        EngineConfig(block_size=0)
    with pytest.raises(EngineError, match="dtype"):
        EngineConfig(dtype="float99")
    with pytest.raises(EngineError, match="max_num_seqs"):
        EngineConfig(max_num_seqs=64, max_batch_tokens=32)
    eng = engine(v3, tok)
    with pytest.raises(EngineError, match="empty"):
        eng.generate([[]])
    with pytest.raises(EngineError, match="token ids"):
        eng.generate([[5, 99999]])
    with pytest.raises(EngineError, match="token ids"):
        eng.generate([[5, 6], [5, 99999]])  # all or nothing: the valid first prompt is not left queued
    assert not eng.has_unfinished() and not eng.requests


def test_engine_without_a_tokenizer_takes_token_ids(v3, tok):
    p = SamplingParams(n=2, temperature=0.8, max_tokens=10, seed=4)
    bare = engine(v3, None)
    outs = bare.generate(PROMPTS, p)
    ref = engine(v3, tok).generate(PROMPTS, p)
    assert all(tok.eos_token_id not in c.token_ids for o in ref for c in o.outputs)   # so no EOS cut one side
    assert [[(c.token_ids, c.logprobs, c.finish_reason) for c in o.outputs] for o in outs] == \
        [[(c.token_ids, c.logprobs, c.finish_reason) for c in o.outputs] for o in ref]
    assert all(c.text == "" for o in outs for c in o.outputs) and any(c.text for o in ref for c in o.outputs)
    stop_id = outs[1].outputs[0].token_ids[3]
    (o,) = bare.generate([PROMPTS[1]], SamplingParams(n=2, temperature=0.8, max_tokens=10, seed=4,
                                                      stop_token_ids=[stop_id]))
    c = o.outputs[0]
    assert c.token_ids[-1] == stop_id and c.finish_reason == "stop" and c.stop_reason == stop_id and c.text == ""
    greedy = SamplingParams(temperature=0, max_tokens=5)
    deltas = list(bare.stream([PROMPTS[0]], greedy))
    (want,) = engine(v3, tok).generate([PROMPTS[0]], greedy)
    assert [t for d in deltas for t in d.token_ids] == want.outputs[0].token_ids
    assert all(d.text == "" for d in deltas) and deltas[-1].finish_reason == "length"
    assert bare.cache.free_blocks() == bare.cache.num_blocks


@pytest.mark.parametrize("prompt, params, err", [
    ("The answer is", None, EngineError),
    ([{"role": "user", "content": "hi"}], None, EngineError),
    ([5, 17, 300], SamplingParams(stop=["e"]), SamplingError),
])
def test_engine_without_a_tokenizer_refuses_text(v3, prompt, params, err):
    eng = engine(v3, None)
    with pytest.raises(err, match="needs? a tokenizer") as e:
        eng.generate([prompt], params)
    assert "\n" not in str(e.value)
    assert not eng.has_unfinished() and not eng.requests


def test_bf16_cache_halves_bytes_and_runs(v3, tok):
    eng = engine(v3, tok, dtype="bfloat16")
    assert eng.cache.a.dtype == torch.bfloat16
    assert eng.cache.bytes_per_token * 2 == engine(v3, tok).cache.bytes_per_token
    outs = eng.generate(PROMPTS, SamplingParams(n=2, temperature=0.7, seed=0, max_tokens=8))
    assert all(c.finish_reason == "stop" or len(c.token_ids) == 8 for o in outs for c in o.outputs)
    assert eng.cache.free_blocks() == eng.cache.num_blocks


def test_leaving_a_stream_early_cancels_and_frees(v3, tok):
    eng = engine(v3, tok)
    total = eng.cache.free_blocks()
    it = eng.stream([PROMPTS[0], PROMPTS[1]], SamplingParams(n=2, max_tokens=40, seed=1))
    first = [next(it) for _ in range(3)]
    assert all(d.finish_reason is None and len(d.token_ids) == 1 for d in first)
    it.close()
    assert eng.cache.free_blocks() == total and not eng.has_unfinished() and not eng.requests


# ----------------------------------------------------------------------- MTP speculative decoding
def test_speculative_rule_keeps_the_target_distribution():
    from r1lab.engine.sampler import speculative_accept
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
    q = torch.tensor([0.1, 0.4, 0.0, 0.3, 0.1, 0.1])
    N = 40000
    gens = [make_generator(3, i) for i in range(N)]
    drafts = torch.multinomial(q, N, replacement=True, generator=torch.Generator().manual_seed(0))
    tokens, accepted = speculative_accept(p.expand(N, -1), q.expand(N, -1), drafts, gens)
    freq = torch.bincount(tokens, minlength=6).float() / N
    assert (freq - p).abs().max().item() < 0.01                    # 4+ standard errors at N = 40k
    assert abs(accepted.float().mean().item() - torch.minimum(p, q).sum().item()) < 0.01  # E[accept] = Σ min(p, q)
    assert freq[5].item() == 0                                     # never a token the target excludes
    # one-hot (greedy) target: always its argmax, accepted exactly when the draft was it
    onehot = torch.zeros(2, 6)
    onehot[:, 2] = 1
    toks, acc = speculative_accept(onehot, q.expand(2, -1), torch.tensor([2, 4]), gens[:2])
    assert toks.tolist() == [2, 2] and acc.tolist() == [True, False]


def test_spec_mtp_greedy_identical_and_logprobs_exact(v3, tok):
    p = SamplingParams(temperature=0, max_tokens=24, logprobs=2)
    plain = engine(v3, tok).generate(PROMPTS, p)
    spec_eng = engine(v3, tok, spec_mtp=True)
    spec = spec_eng.generate(PROMPTS, p)
    assert [o.outputs[0].token_ids for o in spec] == [o.outputs[0].token_ids for o in plain]
    assert spec_eng.spec_drafted > 0 and spec_eng.acceptance_rate is not None
    with torch.no_grad():
        for prompt, out in zip(PROMPTS, spec):
            c = out.outputs[0]
            full = torch.tensor([prompt + c.token_ids])
            lp = torch.log_softmax(v3(full).logits.float(), -1)[0, len(prompt) - 1: -1]
            want = lp.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
            assert (torch.tensor(c.logprobs) - want).abs().max().item() < 1e-5
            assert [list(t) for t in c.top_logprobs] == lp.topk(2, -1).indices.tolist()


@pytest.fixture(scope="module")
def shipped():
    from r1lab.checkpoint import load_model, resolve_checkpoint
    return load_model("r1zero-base"), load_tokenizer(resolve_checkpoint("r1zero-base"))


def test_spec_mtp_accept_path_on_the_shipped_base(shipped):
    """The random model above rejects nearly every draft; the shipped base was pre-trained with
    the MTP loss, so its drafts are mostly accepted: this runs the accept path (the draft and
    a bonus token committed in one step) against plain decoding and the training forward."""
    from r1lab.tasks import get_task

    model, btok = shipped
    assert next(model.parameters()).dtype == torch.float32   # stored in bf16, loaded and run in fp32
    task = get_task("chain_add", terms=10, digits=1, mod=4, solution="prefix", wording="digit_sum")
    exs = list(itertools.islice(task.examples("test"), 8))
    # as pre-trained (plain style: the bare question): direct answers, and worked solutions
    # started with their first running value (the base picks them only ≈ 9 % of the time)
    prompts = [task.prompt(ex, "plain") for ex in exs[:4]]
    prompts += [task.prompt(ex, "plain") + " <think> " + ex.meta["solution"][0] for ex in exs[4:]]
    p = SamplingParams(temperature=0, max_tokens=40, logprobs=2)
    plain = engine(model, btok).generate(prompts, p)
    eng = engine(model, btok, spec_mtp=True)
    assert eng.cache.a.dtype == torch.float32
    spec = eng.generate(prompts, p)
    assert [o.outputs[0].token_ids for o in spec] == [o.outputs[0].token_ids for o in plain]
    assert all(o.outputs[0].finish_reason == "stop" and "</answer>" in o.outputs[0].text for o in spec)
    # measured: 68 of 68 drafts accepted, on 1 or 2 threads (the random model above: 0 of 88)
    assert eng.spec_drafted >= 50 and eng.acceptance_rate >= 0.9
    with torch.no_grad():
        for out in spec:
            c, n = out.outputs[0], len(out.prompt_token_ids)
            full = torch.tensor([out.prompt_token_ids + c.token_ids])
            lp = torch.log_softmax(model(full).logits.float(), -1)[0, n - 1: -1]
            want = lp.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
            assert (torch.tensor(c.logprobs) - want).abs().max().item() < 1e-5
            assert [list(t) for t in c.top_logprobs] == lp.topk(2, -1).indices.tolist()


def test_spec_mtp_seeded_stops_and_budget(v3, tok):
    p = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_tokens=17, seed=11)
    a = engine(v3, tok, spec_mtp=True).generate(PROMPTS, p)
    b = engine(v3, tok, spec_mtp=True, block_size=8).generate(PROMPTS[::-1], p)[::-1]
    assert [[c.token_ids for c in o.outputs] for o in a] == [[c.token_ids for c in o.outputs] for o in b]
    assert all(len(c.token_ids) == 17 and c.finish_reason == "length" for o in a for c in o.outputs)
    # a stop token met as the accepted draft or the bonus token ends the completion right there
    target = a[1].outputs[0].token_ids[6]
    eng = engine(v3, tok, spec_mtp=True)
    (o,) = eng.generate([PROMPTS[1]], SamplingParams(n=3, temperature=1.0, top_p=0.9, max_tokens=17, seed=11,
                                                     stop_token_ids=[target]))
    c = o.outputs[0]
    assert c.token_ids == a[1].outputs[0].token_ids[: a[1].outputs[0].token_ids.index(target) + 1]
    assert c.finish_reason == "stop" and c.stop_reason == target
    assert eng.cache.free_blocks() == eng.cache.num_blocks


def test_spec_mtp_needs_an_mtp_module(tok):
    dense = build_model(qwen_cfg(), seed=0)
    with pytest.raises(EngineError, match="MTP"):
        engine(dense, tok, spec_mtp=True)
    with pytest.raises(EngineError, match="spec_mtp"):
        EngineConfig(spec_mtp="yes")


def test_tiny_temperature_is_greedy_and_logprobs_zero_has_no_alternatives(v3, tok):
    """A temperature below GREEDY_EPS (1e-300 passes every range check) would overflow
    logits / T into garbage: it samples greedily. ``logprobs=0`` returns the sampled token's
    log-prob with no alternatives (OpenAI's top_logprobs 0), not a crash."""
    e = engine(v3, tok)
    prompt = "12+34="
    greedy = e.generate([prompt], SamplingParams(max_tokens=8, temperature=0, seed=1))[0].outputs[0]
    for t in (1e-300, 5e-324, 1e-7):
        tiny = e.generate([prompt], SamplingParams(max_tokens=8, temperature=t, seed=1))[0].outputs[0]
        assert tiny.token_ids == greedy.token_ids, t
    out = e.generate([prompt], SamplingParams(max_tokens=4, temperature=0, logprobs=0))[0].outputs[0]
    assert out.top_logprobs == [{}] * len(out.token_ids) and len(out.logprobs) == len(out.token_ids)
    assert out.logprobs == pytest.approx(greedy.logprobs[:len(out.token_ids)])
