"""
engine.py: batched generation for ragged agent batches (`model.generate` is this file's `generate`).

A second component beside model.py (which holds the decoder, the KV cache layout and attention): the
decode loop, its preallocated state, the CUDA graphs that replay its steps, and the sampler.

Contract
- `generate(model, prompts, max_new_tokens, ...)`: ragged prompts (a list of token-id lists), greedy /
  temperature / top-k / top-p, per-row stop ids. Returns a `Generation`: the sampled ids, each sampled
  token's log-probability under softmax(logits / logprob_temperature) and the response mask (1 for sampled
  tokens, the stop token included; 0 after).
- Prefill: the prompts in length buckets (SDPA) or packed (flash), logits only at each row's last prompt
  token. Identical prompts (the N rollouts of a group share their step-0 prompt) are prefilled once and
  their cache rows copied.
- Decode: one static-shape step, `Engine.step(b, S)`: the first b rows of a preallocated cache, attention
  over its first S slots, token ids and lengths in preallocated device tensors (positions = lengths), no
  host synchronisation. Static mode (the default on CUDA): b is a batch bucket (BUCKETS), S a multiple of
  S_BLOCK, each (b, S) step is captured once into a CUDA graph and replayed (nano-vllm's pattern), the
  cache and graphs are kept on the model between calls, and the host looks at the finished rows only every
  SYNC_EVERY steps. Exact mode (the default on CPU): the same step run eagerly with b = live rows and
  S = the longest live row, checked every step; that is the previous engine's work, no more.
- Finished rows stop costing compute: when the live rows fit a bucket at most half the current one, they
  are copied to the front of the cache and the step shrinks to that bucket.
- Sampling draws one uniform per prompt and step, whatever the bucket or compaction, so results do not
  depend on either: static and exact mode give the same tokens from the same generator (up to float
  rounding of the padded GEMMs), and so do graph replay and eager decoding.

Departures from the previous engine (numbers unchanged on CPU)
1. On CUDA the inverse-CDF sampler accumulates the CDF in float32 (float64 on CPU): over a 150k vocabulary
   the CDF's rounding is ~1e-7 absolute, so tokens with probability below that are mis-weighted by as much.
2. CUDA graphs are off under autocast (autocast's weight-cast cache does not survive capture) and under
   FSDP2 (its hooks and re-gathered weights around every forward: static steps run eagerly there), and are
   recaptured when any parameter's storage moves or an adapter is switched; the parameters are read in
   place, so optimizer steps between calls need nothing.

`python -m pytest tests/test_model.py` (exactness), `python bench.py` (CPU speed), `python gpu_check.py`.
"""

import time
from dataclasses import dataclass

import torch
from torch.distributed.fsdp import FSDPModule

import model as M

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # static mode's batch sizes
S_BLOCK = 128  # static mode: attention spans a multiple of this many cache slots (one graph per span)
SYNC_EVERY = 8  # static mode: decode steps between host checks for finished rows
CUDA_GRAPHS = True  # False: static mode runs its steps eagerly on CUDA too (to compare against the graphs)


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, R) sampled ids, pad_id after a row stopped
    logprobs: torch.Tensor  # (B, R) float32 log-prob of each sampled token (logprob_temperature), 0 where masked
    mask: torch.Tensor  # (B, R) 1 for sampled tokens (the stop token included), 0 after
    prefill_s: float = 0.0
    decode_s: float = 0.0

    def lists(self):
        """The sampled ids of each row as a list (stop token included)."""
        return [row[:int(m.sum())].tolist() for row, m in zip(self.tokens, self.mask)]


def sample(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None, u=None):
    """logits: (B, V) float32. temperature 0 = greedy. u: (B, 1) uniforms in [0, 1), drawn here if None.
    Returns (B,) token ids."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature if temperature != 1.0 else logits
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:  # keep the smallest set whose mass reaches top_p (always at least the top token)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    # inverse-CDF sampling: one uniform per row. torch.multinomial draws V exponentials per row,
    # 40x slower on CPU (9 ms per step for 64 x 4k, 450 ms for 64 x 150k). float64 keeps the tail exact on
    # CPU; on the GPU float32 (departure 1).
    probs = logits.softmax(-1)
    cdf = (probs.double() if probs.device.type == "cpu" else probs).cumsum(-1)  # (B, V)
    if u is None:
        u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype)
    return torch.searchsorted(cdf, u.to(cdf.dtype) * cdf[:, -1:], right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def bucket(n, static):
    """Rows the step runs for n live rows: n itself (exact mode) or the smallest bucket that holds n."""
    return next((b for b in BUCKETS if b >= n), -(-n // 256) * 256) if static else n


# -----------------------------------------------------------------------------
# The decode state: a preallocated cache, ids and logits, and the graphs of its steps.

class Engine:
    """Decode state for up to `rows` rows of `slots` tokens. Row r of the cache, ids, logits is live row r."""

    def __init__(self, model, rows, slots, backend, graphs):
        cfg, w = model.config, model.model.embed_tokens.weight
        self.model, self.backend, self.use_graphs, self.rows, self.slots = model, backend, graphs, rows, slots
        self.cache = M.KVCache.empty(cfg, rows, slots, w.device, w.dtype, heads_first=backend != "flash")
        self.ids = torch.zeros(rows, 1, dtype=torch.long, device=w.device)  # (rows, 1) next input token
        self.logits = torch.zeros(rows, cfg.vocab_size, device=w.device)  # (rows, V) float32
        self.graphs, self.pool, self.signature = {}, None, None

    def step(self, b, S):
        """Rows [0, b): embed ids, append k/v at each row's length, attend over slots [0, S), write logits,
        lengths += 1. Static shapes, no host sync: the body a CUDA graph records."""
        c = self.cache
        seqlens = c.seqlens[:b]  # (b,) int32, a view: the in-place += below updates the cache's lengths
        pos = seqlens.long()[:, None]  # (b, 1) the new token's position = tokens already cached
        ctx = M.AttnContext(self.backend, pos, cache=M.KVCache(c.k[:, :b], c.v[:, :b], seqlens, c.heads_first),
                            extend=True)
        if self.backend == "sdpa":  # (b, 1, 1, S) 0 where visible, -inf past each row's length
            slot, dtype = torch.arange(S, device=pos.device), torch.float32 if pos.device.type == "cpu" else c.k.dtype
            ctx.bias = torch.zeros(b, 1, 1, S, device=pos.device, dtype=dtype).masked_fill(
                slot > pos[:, None, :, None], float("-inf"))  # float32 for CPU's matmul path, else SDPA's dtype
        self.logits[:b] = self.model(self.ids[:b], ctx, out_idx=torch.arange(b, device=pos.device))
        seqlens += 1

    def run(self, b, S):
        """step(b, S): eagerly, or by replaying its CUDA graph (captured after the first eager run)."""
        if not self.use_graphs:
            return self.step(b, S)
        graph = self.graphs.get((b, S))
        if graph is not None:
            return graph.replay()
        self.step(b, S)  # the real step, and the warm-up before capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, self.pool):
            self.step(b, S)  # recorded, not run
        self.pool = self.pool or graph.pool()
        self.graphs[(b, S)] = graph

    def keep(self, rows, b):
        """Move live cache rows `rows` (sorted) to the front; rows [len(rows), b) become idle padding."""
        c, n = self.cache, len(rows)
        c.k[:, :n], c.v[:, :n] = c.k[:, rows], c.v[:, rows]
        c.seqlens[:n] = c.seqlens[rows]
        c.seqlens[n:b] = 0


def _signature(model):
    """What a captured graph depends on besides its buffers: parameter storage and adapter switches."""
    return (tuple(p.data_ptr() for p in model.parameters()),
            tuple(m.lora_enabled for m in model.modules() if isinstance(m, M.LoRALinear)))


def _engine(model, rows, slots, backend, static, graphs):
    """Exact mode: a fresh engine of exactly this size. Static mode: the model's kept engine if it is big
    enough (graphs dropped if the parameters moved), else a new one (kept; slots rounded up to S_BLOCK)."""
    if not static:
        return Engine(model, rows, slots, backend, graphs=False)
    eng, w = getattr(model, "_engine", None), model.model.embed_tokens.weight
    if eng is None or eng.rows < rows or eng.slots < slots or eng.backend != backend or eng.use_graphs != graphs \
            or (eng.cache.k.dtype, eng.cache.k.device) != (w.dtype, w.device):
        rows, slots = max(rows, eng.rows if eng else 0), max(slots, eng.slots if eng else 0)
        eng = model._engine = None  # free the old cache before allocating the new one
        slots = min(-(-slots // S_BLOCK) * S_BLOCK, model.config.max_position_embeddings)
        eng = model._engine = Engine(model, rows, slots, backend, graphs)
    sig = _signature(model) if graphs else None
    if sig != eng.signature:
        eng.graphs, eng.pool, eng.signature = {}, None, sig
    return eng


def release(model):
    """Free the kept decode cache and graphs (static mode) of a model, e.g. before a memory-hungry update."""
    getattr(model, "module", model)._engine = None


# -----------------------------------------------------------------------------
# Generation.

def _prefill(eng, prompts, prefill_tokens):
    """Cache rows [0, B) and logits at each prompt's last token; each distinct prompt is computed once."""
    c, dev, B = eng.cache, eng.ids.device, len(prompts)
    lens = [len(p) for p in prompts]
    first = {}
    src = [first.setdefault(tuple(p), i) for i, p in enumerate(prompts)]  # the row that computes row i
    uniq = sorted(first.values())
    groups = M.buckets([lens[i] for i in uniq], prefill_tokens) if eng.backend == "sdpa" else [range(len(uniq))]
    for g in groups:  # bounded memory, little padding
        g = [uniq[j] for j in g]
        ids, ctx, starts = M.fresh_context(eng.backend, [prompts[i] for i in g], dev, c, torch.as_tensor(g, device=dev))
        eng.logits[g] = eng.model(ids, ctx, out_idx=starts + torch.as_tensor([lens[i] - 1 for i in g], device=dev))
    dup = [i for i in range(B) if src[i] != i]
    if dup:  # copy the shared prompt's keys, values and logits
        d, s, T = torch.as_tensor(dup, device=dev), torch.as_tensor([src[i] for i in dup], device=dev), max(lens)
        c.k[:, d, :T], c.v[:, d, :T], eng.logits[d] = c.k[:, s, :T], c.v[:, s, :T], eng.logits[s]
    c.seqlens[:B] = torch.as_tensor(lens, dtype=torch.int32, device=dev)
    c.seqlens[B:] = 0


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, stop_ids=(),
             generator=None, pad_id=0, compact=True, prefill_tokens=16384, logprob_temperature=1.0, static=None):
    """Sample a continuation for every prompt of a ragged batch.

    prompts: list of B token-id lists, each of its own length. Rows stop on any
    id in stop_ids (EOS included by the caller) or after max_new_tokens; a row's
    stop token is part of its response (mask 1). `generator` (a torch.Generator
    on the model's device) makes sampling reproducible. Log-probs are those of
    softmax(logits / logprob_temperature), whatever sampler was used (RL passes
    its sampling temperature: the policy whose ratio PPO takes). static: the
    static-shape mode with CUDA graphs (None: on CUDA; True on CPU runs the
    same static steps eagerly, which the tests use).
    """
    assert len(prompts) > 0 and all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
    assert max_new_tokens > 0, "max_new_tokens must be positive"
    inner = getattr(model, "module", model)
    cfg, w = inner.config, inner.model.embed_tokens.weight
    dev, B, R = w.device, len(prompts), max_new_tokens
    lens = [len(p) for p in prompts]
    if max(lens) + R > cfg.max_position_embeddings:
        raise ValueError(f"prompt ({max(lens)}) + max_new_tokens ({R}) exceeds "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    backend = M.resolve_backend(inner.attn_backend, w)
    static = dev.type == "cuda" if static is None else static
    graphs = static and CUDA_GRAPHS and dev.type == "cuda" and not torch.is_autocast_enabled("cuda") \
        and not isinstance(inner, FSDPModule)
    b = bucket(B, static)
    eng = _engine(inner, b, max(lens) + R, backend, static, graphs)
    t0 = time.perf_counter()
    _prefill(eng, prompts, prefill_tokens)
    t1 = time.perf_counter()

    tokens = torch.full((B + 1, R), pad_id, dtype=torch.long, device=dev)  # row B: a sink for writes
    logprobs = torch.zeros(B + 1, R, device=dev)  # of finished and padding rows
    mask = torch.zeros(B + 1, R, dtype=torch.long, device=dev)
    stop = torch.as_tensor(sorted(set(stop_ids)), dtype=torch.long, device=dev)
    live = torch.cat([torch.arange(B, device=dev), torch.full((b - B,), B, device=dev)])  # prompt of each row
    done = torch.arange(b, device=dev) >= B  # (b,) per cache row; padding rows are done from the start
    live_lens = lens  # prompt lengths of the live rows (host side): the longest one sets the span S
    sync = SYNC_EVERY if static else 1
    for t in range(R):
        logits = eng.logits[:b]
        u = None
        if temperature > 0:  # one uniform per prompt (not per row): bucketing and compaction change nothing
            u = torch.rand(B, 1, generator=generator, device=dev,
                           dtype=torch.float64 if dev.type == "cpu" else torch.float32)[live.clamp(max=B - 1)]
        nxt = sample(logits, temperature, top_k, top_p, u=u)  # (b,)
        z = logits if logprob_temperature == 1.0 else logits / logprob_temperature  # (b, V): one pass fewer at T = 1
        lp = z.gather(-1, nxt[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)  # log_softmax at the sampled ids
        dst = torch.where(done, B, live)
        tokens[dst, t], logprobs[dst, t], mask[dst, t] = nxt, lp, 1
        done = done | torch.isin(nxt, stop)
        if t == R - 1:
            break
        if (t + 1) % sync == 0:  # the only host syncs of the loop
            n = int((~done).sum())
            if n == 0:
                break
            nb = bucket(n, static)
            if compact and nb * 2 <= b:
                rows = (~done).nonzero().squeeze(-1)
                eng.keep(rows, nb)
                pad = torch.full((nb - n,), B, device=dev)
                live, nxt = torch.cat([live[rows], pad]), torch.cat([nxt[rows], torch.zeros_like(pad)])
                done, b = torch.arange(nb, device=dev) >= n, nb
                live_lens = [lens[i] for i in live[:n].tolist()]
        eng.ids[:b, 0] = nxt
        S = max(live_lens) + t + 1  # slots the longest live row attends over after appending this token
        eng.run(b, min(-(-S // S_BLOCK) * S_BLOCK, eng.slots) if static else S)
    return Generation(tokens[:B], logprobs[:B], mask[:B], prefill_s=t1 - t0, decode_s=time.perf_counter() - t1)
