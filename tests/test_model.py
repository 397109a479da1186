"""model.py against transformers on tiny random checkpoints (CPU, float32, no downloads)."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
import transformers

import engine as E
import model as M

CONFIGS = {  # name -> (transformers config class, kwargs): GQA, tied embeddings, biases, qk-norm
    "qwen2-gqa": (transformers.Qwen2Config, dict(num_attention_heads=4, num_key_value_heads=2)),
    "qwen2-tied-mha": (transformers.Qwen2Config, dict(num_attention_heads=4, num_key_value_heads=4,
                                                       tie_word_embeddings=True)),
    "llama-gqa": (transformers.LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=1, rope_theta=500000.0)),
    "llama-bias-tied": (transformers.LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=2,
                                                       attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    "qwen3-gqa": (transformers.Qwen3Config, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12)),
}


def make_hf(name, path, seed=0, vocab=97, **over):
    cls, kw = CONFIGS[name]
    kw = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              max_position_embeddings=256, bos_token_id=None, eos_token_id=None, pad_token_id=None, **kw)
    kw.update(over)
    torch.manual_seed(seed)
    hf = transformers.AutoModelForCausalLM.from_config(cls(**kw), dtype=torch.float32).eval()
    with torch.no_grad():  # transformers initialises biases and norms trivially; randomise them so they are tested
        for n, p in hf.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(path)
    return hf


@pytest.fixture(params=list(CONFIGS))
def pair(request, tmp_path):
    hf = make_hf(request.param, tmp_path)
    return hf, M.load(str(tmp_path), attn_backend="sdpa")


def prompts(n, vocab=97, lo=3, hi=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def full_logits(m, seqs):
    """All-position logits of our model for a right-padded ragged batch, as a list per sequence."""
    ids = M._pad(seqs, "cpu")
    ctx = M.AttnContext("sdpa", torch.arange(ids.shape[1]).expand_as(ids))
    out = m(ids, ctx, out_idx=torch.arange(ids.numel())).view(*ids.shape, -1)
    return [out[i, :len(s)] for i, s in enumerate(seqs)]


# ---------------------------------------------------------------------------- parity

def test_logits_parity(pair):
    """Every position's logits match transformers within 1e-4 (float32), for each row of a ragged batch."""
    hf, m = pair
    seqs = prompts(5)
    with torch.no_grad():
        ours = full_logits(m, seqs)
        for s, o in zip(seqs, ours):
            ref = hf(torch.tensor([s])).logits[0]
            assert (o - ref).abs().max().item() <= 1e-4


def test_greedy_matches_transformers_generate(pair):
    """Greedy decoding of a ragged batch equals transformers' greedy generate for each prompt, token for token."""
    hf, m = pair
    seqs = prompts(4, seed=2)
    gen = M.generate(m, seqs, max_new_tokens=12, temperature=0)
    for s, got in zip(seqs, gen.lists()):
        ref = hf.generate(torch.tensor([s]), attention_mask=torch.ones(1, len(s), dtype=torch.long),
                           max_new_tokens=12, do_sample=False, pad_token_id=0)[0, len(s):]
        assert got == ref.tolist()


def test_ragged_batch_equals_rows_alone(tmp_path):
    """Batching prompts of different lengths changes nothing: each row equals that prompt decoded alone."""
    make_hf("qwen2-gqa", tmp_path)
    m = M.load(str(tmp_path), attn_backend="sdpa")
    seqs = prompts(6, lo=2, hi=60, seed=3)
    batch = M.generate(m, seqs, max_new_tokens=10, temperature=0)
    for i, s in enumerate(seqs):
        alone = M.generate(m, [s], max_new_tokens=10, temperature=0)
        assert batch.lists()[i] == alone.lists()[0]
        torch.testing.assert_close(batch.logprobs[i], alone.logprobs[0], atol=1e-5, rtol=0)


def test_cached_decoding_equals_recomputation(tmp_path):
    """Log-probs returned by cached decoding equal an uncached forward over prompt + response, and each
    greedy token is the argmax of the uncached logits at its position."""
    make_hf("llama-gqa", tmp_path)
    m = M.load(str(tmp_path), attn_backend="sdpa")
    seqs = prompts(5, seed=4)
    gen = M.generate(m, seqs, max_new_tokens=9, temperature=0)
    resp = gen.lists()
    with torch.no_grad():
        logp, _ = M.score(m, seqs, resp)
        logits = full_logits(m, [s + r for s, r in zip(seqs, resp)])
    torch.testing.assert_close(logp, gen.logprobs, atol=1e-5, rtol=0)
    for s, r, lg in zip(seqs, resp, logits):
        assert lg[len(s) - 1:-1].argmax(-1).tolist() == r


# ---------------------------------------------------------------------------- save / load

@pytest.mark.parametrize("shard", [False, True])
def test_save_then_transformers_load(tmp_path, shard):
    """save() writes a checkpoint transformers loads unchanged (single file and sharded), with identical logits;
    our own loader reads it back too."""
    make_hf("qwen2-tied-mha", tmp_path / "a")
    m = M.load(str(tmp_path / "a"))
    M.save(m, str(tmp_path / "b"), max_shard_bytes=20_000 if shard else 5 * 2**30)
    files = sorted(os.listdir(tmp_path / "b"))
    assert ("model.safetensors.index.json" in files) == shard and not any(f.endswith(".tmp") for f in files)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "b")).eval()
    m2 = M.load(str(tmp_path / "b"))
    s = prompts(1)[0]
    with torch.no_grad():
        ref = hf(torch.tensor([s])).logits[0]
        assert (full_logits(m, [s])[0] - ref).abs().max().item() <= 1e-5
        assert torch.equal(full_logits(m2, [s])[0], full_logits(m, [s])[0])
    assert m2.lm_head.weight is m2.model.embed_tokens.weight  # still tied


def test_model_from_config_roundtrip(tmp_path):
    """A model built from config_dict() + init_weights() saves to a checkpoint transformers reads."""
    cfg = M.ModelConfig.from_hf(M.config_dict(vocab_size=50, hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    m = M.init_weights(M.Transformer(cfg), seed=3)
    M.save(m, str(tmp_path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert (full_logits(m, [[1, 2, 3]])[0] - hf(torch.tensor([[1, 2, 3]])).logits[0]).abs().max() <= 1e-5


# ---------------------------------------------------------------------------- scoring

def test_score_matches_transformers_and_has_gradients(tmp_path):
    """score() gives transformers' log-softmax of each response token and its entropy; gradients flow; the
    result does not depend on how sequences are bucketed; logits are chunked without changing values."""
    hf = make_hf("qwen2-gqa", tmp_path)
    m = M.load(str(tmp_path), attn_backend="sdpa")
    ps, rs = prompts(6, seed=5), prompts(6, lo=1, hi=8, seed=6)
    rs[2] = []  # an empty response contributes nothing
    m.logit_chunk = 4
    logp, ent = M.score(m, ps, rs, bucket_tokens=64)
    logp2, ent2 = M.score(m, ps, rs, bucket_tokens=10**6)
    torch.testing.assert_close(logp, logp2, atol=1e-5, rtol=0)
    for i, (p, r) in enumerate(zip(ps, rs)):
        with torch.no_grad():
            lsm = F.log_softmax(hf(torch.tensor([p + r])).logits[0, len(p) - 1:-1], -1)
        want = lsm.gather(-1, torch.tensor(r, dtype=torch.long)[:, None]).squeeze(-1)
        torch.testing.assert_close(logp[i, :len(r)], want, atol=1e-4, rtol=0)
        torch.testing.assert_close(ent[i, :len(r)], -(lsm.exp() * lsm).sum(-1), atol=1e-4, rtol=0)
        assert (logp[i, len(r):] == 0).all()
    (logp.sum() + ent.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_padding_gets_no_gradient(tmp_path):
    """Gradients of the response log-probs do not depend on padding: a batch equals the sum of rows alone."""
    make_hf("llama-gqa", tmp_path)
    m = M.load(str(tmp_path), attn_backend="sdpa")
    ps, rs = prompts(3, seed=7), prompts(3, lo=2, hi=6, seed=8)
    M.score(m, ps, rs)[0].sum().backward()
    batch = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    for p, r in zip(ps, rs):
        M.score(m, [p], [r])[0].sum().backward()
    for a, b in zip(batch, (p.grad for p in m.parameters())):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_activation_checkpointing_same_gradients(tmp_path):
    """grad_checkpointing recomputes activations in backward and yields the same gradients."""
    make_hf("qwen3-gqa", tmp_path)
    m = M.load(str(tmp_path), attn_backend="sdpa")
    ps, rs = prompts(3, seed=9), prompts(3, lo=2, hi=6, seed=10)
    M.score(m, ps, rs)[0].sum().backward()
    ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.grad_checkpointing = True
    M.score(m, ps, rs)[0].sum().backward()
    for a, p in zip(ref, m.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------- sampling and stopping

def test_sampler_distribution_and_truncation():
    """Temperature sampling follows softmax(logits / T); top-k and top-p only ever return tokens they keep."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    for T in (1.0, 0.5):
        freq = torch.bincount(M.sample(logits, T, generator=g), minlength=5).float() / len(logits)
        torch.testing.assert_close(freq, (logits[0] / T).softmax(-1), atol=0.015, rtol=0)
    assert set(M.sample(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    p = logits[0].softmax(-1)  # 0.55, 0.20, 0.12, ...: top_p 0.7 keeps exactly the first two
    assert p[0] < 0.7 < p[0] + p[1]
    assert set(M.sample(logits, 1.0, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(M.sample(logits, 1.0, top_p=0.1, generator=g).tolist()) == {0}
    assert torch.equal(M.sample(logits[:3], 0), torch.zeros(3, dtype=torch.long))


def test_generation_is_reproducible_and_stops_per_row(tmp_path):
    """The same generator seed gives the same samples; a row stops at its stop token (kept, mask 1) and is
    padded after; rows without a stop token run to max_new_tokens; log-probs are those of softmax(logits / T)
    for the T asked for, and score() at that T gives the same."""
    make_hf("qwen2-gqa", tmp_path)
    m = M.load(str(tmp_path), attn_backend="sdpa")
    seqs = prompts(8, seed=11)
    a = M.generate(m, seqs, 16, temperature=1.5, top_k=20, generator=torch.Generator().manual_seed(0))
    b = M.generate(m, seqs, 16, temperature=1.5, top_k=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    with torch.no_grad():
        torch.testing.assert_close(M.score(m, seqs, a.lists())[0], a.logprobs, atol=1e-5, rtol=0)
        t = M.generate(m, seqs, 16, temperature=1.5, top_k=20, generator=torch.Generator().manual_seed(0),
                       logprob_temperature=1.5)
        assert torch.equal(t.tokens, a.tokens)
        torch.testing.assert_close(M.score(m, seqs, a.lists(), temperature=1.5)[0], t.logprobs, atol=1e-5, rtol=0)
        assert not torch.allclose(t.logprobs, a.logprobs)
    stop = a.tokens[0, 3].item()  # row 0 must stop at or before step 3
    c = M.generate(m, seqs, 16, temperature=1.5, top_k=20, stop_ids=[stop], generator=torch.Generator().manual_seed(0),
                   pad_id=-1)
    for row, mask in zip(c.tokens, c.mask):
        n = int(mask.sum())
        hit = (row[:n] == stop).nonzero()
        if n < 16:
            assert row[n - 1] == stop and len(hit) == 1 and (row[n:] == -1).all() and (mask[n:] == 0).all()
        else:
            assert len(hit) == 0 or hit[0, 0] == 15
    assert c.mask[0].sum() <= 4
    assert torch.equal(c.tokens[:, 0], a.tokens[:, 0])


def test_compaction_does_not_change_results(tmp_path):
    """Dropping finished rows from the cache mid-generation gives the same tokens as keeping them."""
    make_hf("qwen2-gqa", tmp_path)
    m = M.load(str(tmp_path), attn_backend="sdpa")
    seqs = prompts(8, seed=12)
    first = M.generate(m, seqs, 1, temperature=0).tokens[:, 0].tolist()
    stop = [first[0], first[1], first[2], first[3]]  # half the rows stop at once
    x = M.generate(m, seqs, 12, temperature=0, stop_ids=stop, compact=True)
    y = M.generate(m, seqs, 12, temperature=0, stop_ids=stop, compact=False)
    assert torch.equal(x.tokens, y.tokens) and torch.equal(x.mask, y.mask)
    torch.testing.assert_close(x.logprobs, y.logprobs, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- the static decode step

def reference_sample(logits, temperature, top_k, generator):
    """The previous engine's sampler (float64 inverse CDF, one uniform per row), top-k only."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        logits = logits.masked_fill(logits < torch.topk(logits, top_k, dim=-1).values[:, -1:], float("-inf"))
    cdf = logits.softmax(-1).double().cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


@torch.no_grad()
def reference_generate(m, prompts, R, temperature=1.0, top_k=0, stop_ids=(), generator=None):
    """The previous engine, kept here as the reference: every row decoded every step (no compaction), the
    matmul attention over exactly the longest row, a host check after every step."""
    cfg, B = m.config, len(prompts)
    lens = [len(p) for p in prompts]
    cache = M.KVCache.empty(cfg, B, max(lens) + R, "cpu", torch.float32)
    logits = torch.empty(B, cfg.vocab_size)
    for i, p in enumerate(prompts):
        ids, ctx, _ = M.fresh_context("sdpa", [p], "cpu", cache, torch.tensor([i]))
        logits[i] = m(ids, ctx, out_idx=torch.tensor([len(p) - 1]))[0]
    cache.seqlens = torch.tensor(lens, dtype=torch.int32)
    tokens, logprobs, mask = torch.zeros(B, R, dtype=torch.long), torch.zeros(B, R), torch.zeros(B, R, dtype=torch.long)
    done, stop = torch.zeros(B, dtype=torch.bool), torch.tensor(sorted(set(stop_ids)), dtype=torch.long)
    for t in range(R):
        nxt = reference_sample(logits, temperature, top_k, generator)
        lp = F.log_softmax(logits, -1).gather(-1, nxt[:, None]).squeeze(-1)
        keep = ~done
        tokens[keep, t], logprobs[keep, t], mask[keep, t] = nxt[keep], lp[keep], 1
        done = done | torch.isin(nxt, stop)
        if t == R - 1 or bool(done.all()):
            break
        pos = cache.seqlens.long()[:, None]
        ctx = M.AttnContext("sdpa", pos, cache=cache, extend=True)
        S = int(cache.seqlens.max()) + 1
        ctx.bias = torch.zeros(B, 1, 1, S).masked_fill(torch.arange(S)[None, None, None, :] > pos[:, None, :, None],
                                                       float("-inf"))
        logits = m(nxt[:, None], ctx, out_idx=torch.arange(B))
        cache.seqlens += 1
    return tokens, logprobs, mask


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_equals_previous_engine(tmp_path, monkeypatch, static, temperature):
    """Exact mode (CPU's default) and static mode (batch buckets, attention spans of S_BLOCK slots, a host check
    every SYNC_EVERY steps, compaction into smaller buckets) both give the previous engine's tokens, mask and
    log-probs from the same generator: ragged prompts, repeated prompts (prefilled once), rows stopping at
    different steps, sampled and greedy."""
    monkeypatch.setattr(E, "S_BLOCK", 16)  # several spans within this test's lengths
    make_hf("qwen2-gqa", tmp_path, vocab=1000)
    m = M.load(str(tmp_path), attn_backend="sdpa")
    seqs = prompts(11, vocab=1000, lo=2, hi=40, seed=20)
    seqs[3], seqs[7], seqs[8] = seqs[0], seqs[5], seqs[5]  # groups sharing a prompt
    R = 24
    free = reference_generate(m, seqs, R, temperature, generator=torch.Generator().manual_seed(5))[0]
    keep_going = set(free[9:].flatten().tolist())  # rows 9 and 10 must run to the end
    stop = sorted({free[i, t].item() for i, t in ((0, 2), (1, 5), (2, 9), (4, 1), (6, 14), (5, 20))} - keep_going)
    ref = reference_generate(m, seqs, R, temperature, stop_ids=stop, generator=torch.Generator().manual_seed(5))
    got = E.generate(m, seqs, R, temperature, stop_ids=stop, generator=torch.Generator().manual_seed(5), static=static)
    assert 5 <= int((ref[2].sum(1) < R).sum()) <= 9  # most rows stop early, at different steps; some run to the end
    assert torch.equal(got.tokens, ref[0]) and torch.equal(got.mask, ref[2])
    torch.testing.assert_close(got.logprobs, ref[1], atol=1e-5, rtol=0)
    if static:
        assert m._engine.rows == 16  # the kept engine: 11 rows in bucket 16


def test_fused_decode_attention_equals_matmul_path(tmp_path, monkeypatch):
    """The decode attention through one SDPA kernel (CUDA's path) gives the CPU matmul path's tokens and
    log-probs (float32, static steps, ragged prompts, sampled)."""
    make_hf("qwen2-gqa", tmp_path)
    m = M.load(str(tmp_path), attn_backend="sdpa")
    seqs = prompts(9, lo=2, hi=50, seed=24)
    run = lambda: E.generate(m, seqs, 20, 1.0, generator=torch.Generator().manual_seed(6), static=True)
    plain = run()
    monkeypatch.setattr(M, "DECODE_SDPA", True)
    fused = run()
    assert torch.equal(plain.tokens, fused.tokens)
    torch.testing.assert_close(plain.logprobs, fused.logprobs, atol=1e-5, rtol=0)


def test_static_step_keeps_its_engine_and_rebuilds_when_outgrown(tmp_path):
    """Static mode keeps one engine on the model between calls and reuses it when it is big enough; a call
    with more rows or longer sequences replaces it; results do not depend on what an earlier call left in it."""
    make_hf("llama-gqa", tmp_path)
    m = M.load(str(tmp_path), attn_backend="sdpa")
    small, big = prompts(3, seed=21), prompts(20, lo=2, hi=60, seed=22)
    a = E.generate(m, small, 8, generator=torch.Generator().manual_seed(1), static=True)
    eng = m._engine
    E.generate(m, big, 30, generator=torch.Generator().manual_seed(2), static=True)
    assert m._engine is not eng and m._engine.rows == 24 and m._engine.slots >= 90
    eng = m._engine
    b = E.generate(m, small, 8, generator=torch.Generator().manual_seed(1), static=True)
    assert m._engine is eng
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    E.release(m)
    assert m._engine is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replay_equals_eager(tmp_path, monkeypatch):
    """On CUDA in bfloat16, replaying the captured decode steps gives the eager static steps' tokens and
    log-probs from the same generator (sampled, ragged, with stops, a compaction); with adapters switched
    off the graphs are recaptured, not replayed with the adapters' weights."""
    make_hf("qwen2-gqa", tmp_path)
    m = M.load(str(tmp_path), device="cuda", dtype=torch.bfloat16, attn_backend="sdpa")
    seqs = prompts(13, lo=2, hi=60, seed=23)
    run = lambda: E.generate(m, seqs, 40, 1.0, stop_ids=[5, 17], generator=torch.Generator("cuda").manual_seed(3))
    graphed = run()
    assert len(m._engine.graphs) > 0
    monkeypatch.setattr(E, "CUDA_GRAPHS", False)
    eager = run()
    assert not m._engine.use_graphs
    assert torch.equal(graphed.tokens, eager.tokens) and torch.equal(graphed.mask, eager.mask)
    torch.testing.assert_close(graphed.logprobs, eager.logprobs, atol=1e-2, rtol=0)  # bf16; the same kernels
    M.add_lora(m, 2, 4.0)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("lora_B.weight"):
                p.normal_(0, 0.5)
    monkeypatch.setattr(E, "CUDA_GRAPHS", True)
    on = run()
    with M.adapters_off(m):
        off = run()
    assert torch.equal(off.tokens, graphed.tokens) and not torch.equal(on.tokens, graphed.tokens)


# ---------------------------------------------------------------------------- flash-attn path

def fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=True):
    """flash_attn_varlen_func semantics on CPU: causal attention inside each packed sequence."""
    out = []
    for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        o = F.scaled_dot_product_attention(*(x[s:e].transpose(0, 1)[None] for x in (q, k, v)),
                                           is_causal=causal, enable_gqa=True)
        out.append(o[0].transpose(0, 1))
    return torch.cat(out)


def fake_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens, causal=True):
    """flash_attn_with_kvcache semantics on CPU: append k, v at cache_seqlens in place, attend bottom-right causal."""
    B, T = q.shape[:2]
    out = []
    for b in range(B):
        n = int(cache_seqlens[b])
        k_cache[b, n:n + T], v_cache[b, n:n + T] = k[b], v[b]
        mask = torch.arange(n + T)[None, :] <= (n + torch.arange(T))[:, None]
        out.append(F.scaled_dot_product_attention(q[b].transpose(0, 1)[None], k_cache[b, :n + T].transpose(0, 1)[None],
                                                  v_cache[b, :n + T].transpose(0, 1)[None], attn_mask=mask,
                                                  enable_gqa=True)[0].transpose(0, 1))
    return torch.stack(out)


def test_flash_plumbing_with_reference_kernels(tmp_path, monkeypatch):
    """The flash path's packing, cu_seqlens, cache writes and decode bookkeeping give the SDPA path's results
    when the two flash kernels are replaced by CPU reference implementations of their semantics."""
    monkeypatch.setattr(M, "flash_attn_varlen_func", fake_varlen)
    monkeypatch.setattr(M, "flash_attn_with_kvcache", fake_with_kvcache)
    make_hf("qwen2-gqa", tmp_path)
    sd, fl = M.load(str(tmp_path), attn_backend="sdpa"), M.load(str(tmp_path), attn_backend="flash")
    seqs, rs = prompts(5, seed=13), prompts(5, lo=1, hi=6, seed=14)
    g1, g2 = M.generate(sd, seqs, 10, temperature=0), M.generate(fl, seqs, 10, temperature=0)
    g3 = M.generate(fl, seqs, 10, temperature=0, static=True)
    assert torch.equal(g1.tokens, g2.tokens) and torch.equal(g1.tokens, g3.tokens)
    torch.testing.assert_close(g1.logprobs, g2.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(g1.logprobs, g3.logprobs, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(M.score(sd, seqs, rs)[0], M.score(fl, seqs, rs)[0], atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available() or M.flash_attn_varlen_func is None,
                    reason="needs a CUDA device and flash-attn installed")
def test_flash_attn_on_cuda(tmp_path):
    """On CUDA in bfloat16, the real flash-attn kernels agree with SDPA on log-probs and greedy tokens."""
    make_hf("qwen2-gqa", tmp_path)
    sd = M.load(str(tmp_path), device="cuda", dtype=torch.bfloat16, attn_backend="sdpa")
    fl = M.load(str(tmp_path), device="cuda", dtype=torch.bfloat16, attn_backend="flash")
    seqs, rs = prompts(5, seed=15), prompts(5, lo=1, hi=6, seed=16)
    with torch.no_grad():
        torch.testing.assert_close(M.score(sd, seqs, rs)[0], M.score(fl, seqs, rs)[0], atol=3e-2, rtol=0)
    a, b = M.generate(sd, seqs, 8, temperature=0), M.generate(fl, seqs, 8, temperature=0)
    assert (a.tokens == b.tokens).float().mean() > 0.9  # bf16 kernels may flip a near-tie


# ---------------------------------------------------------------------------- bad input

def edit_config(path, **kw):
    d = json.load(open(path / "config.json"))
    d.update(kw)
    json.dump(d, open(path / "config.json", "w"))


@pytest.mark.parametrize("case,needle", [
    ("no_dir", "checkpoint directory not found"),
    ("no_config", "config.json: file not found"),
    ("bad_json", "config.json: not valid JSON"),
    ("no_weights", "no model.safetensors"),
    ("truncated", "model.safetensors: cannot read"),
    ("shape", "_proj.weight' has shape"),
    ("extra_key", "unexpected tensor 'extra.weight'"),
    ("missing_key", "lacks 1 tensor(s), e.g. 'model.norm.weight'"),
    ("rope_scaling", "unsupported option rope_scaling"),
    ("rope_type", "rope_parameters.rope_type='yarn'"),
    ("sliding", "unsupported option use_sliding_window"),
    ("arch", "unsupported option model_type='gpt2'"),
    ("act", "unsupported option hidden_act='gelu'"),
])
def test_bad_checkpoints_give_one_line_errors(tmp_path, case, needle):
    """Each broken or unsupported checkpoint raises CheckpointError with one line naming the file or key."""
    from safetensors.torch import load_file, save_file
    make_hf("qwen2-gqa", tmp_path)
    st = tmp_path / "model.safetensors"
    if case == "no_dir":
        target = tmp_path / "nope"
    else:
        target = tmp_path
        if case == "no_config":
            os.remove(tmp_path / "config.json")
        elif case == "bad_json":
            (tmp_path / "config.json").write_text("{not json")
        elif case == "no_weights":
            os.remove(st)
        elif case == "truncated":
            st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
        elif case == "shape":
            edit_config(tmp_path, intermediate_size=48)
        elif case in ("extra_key", "missing_key"):
            sd = load_file(str(st))
            if case == "extra_key":
                sd["extra.weight"] = torch.zeros(2)
            else:
                del sd["model.norm.weight"]
            save_file(sd, str(st))
        elif case == "rope_scaling":
            edit_config(tmp_path, rope_scaling={"type": "linear", "factor": 2.0})
        elif case == "rope_type":
            edit_config(tmp_path, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})
        elif case == "sliding":
            edit_config(tmp_path, use_sliding_window=True)
        elif case == "arch":
            edit_config(tmp_path, model_type="gpt2")
        elif case == "act":
            edit_config(tmp_path, hidden_act="gelu")
    with pytest.raises(M.CheckpointError) as e:
        M.load(str(target))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert str(target) in msg or "config.json" in msg


def test_too_long_generation_is_refused(tmp_path):
    """A prompt plus max_new_tokens past max_position_embeddings is refused before any work."""
    make_hf("qwen2-gqa", tmp_path)
    m = M.load(str(tmp_path))
    with pytest.raises(ValueError, match="max_position_embeddings=256"):
        M.generate(m, [[1] * 250], max_new_tokens=10)
