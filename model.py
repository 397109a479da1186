"""
model.py: the policy. A hand-written decoder for the Qwen2 / Qwen3 / Llama
families, Hugging Face checkpoint interop, batched generation for ragged agent
batches, and memory-lean scoring for training.

Contract
- `load(path)` builds the model on the meta device and assigns the tensors of a
  local HF checkpoint (one `model.safetensors` or a sharded index) strictly:
  every tensor used, every parameter set, shapes checked. `save(model, path)`
  writes config.json + safetensors that `transformers.AutoModelForCausalLM`
  loads unchanged. Module names equal the HF keys (`model.layers.0.mlp.up_proj`).
- `generate(model, prompts, ...)`: batched sampling for ragged prompts, in engine.py (static-shape decode
  steps, CUDA graphs); `model.generate` is that function.
- `score(model, prompts, responses)`: per-token log-probs and entropies of the
  response tokens, with gradients, with no padding waste on flash-attn (packed
  varlen) and little on SDPA (length-sorted buckets), and full-vocabulary
  logits only for response positions, a chunk at a time.
- Attention has one entry point, `attention()`: flash-attn (varlen for
  prefill and scoring, with-kvcache for decode) when it imports, the tensors
  are on CUDA and in 16-bit; torch SDPA otherwise. `model.attn_backend`
  ("auto" | "flash" | "sdpa") forces a path; one line names the path taken.
- LoRA: `add_lora(model, rank, alpha)` puts low-rank adapters on q/k/v/o and the MLP projections and
  freezes the rest; `adapters_off(model)` / `AdaptersOff(model)` give the base model (the KL reference)
  without a copy; `save_adapters` / `load_adapters`; `save` writes the adapters merged (plain HF).

Log-probability semantics: every log-prob this file returns is log
softmax(logits / T) with T an explicit argument (default 1.0), whatever
temperature / top-k / top-p the sampler used. RL passes its sampling
temperature, so the log-probs are those of the policy it samples from (exactly,
with no top-k/p), the quantity PPO ratios need; verl does the same.

Departures from transformers (numerics are matched; these are scope):
1. Unsupported options raise instead of being approximated: rope scaling of
   any kind, sliding-window attention, attention dropout, activations other
   than SiLU.
2. No attention mask argument: sequences are given by their lengths (right
   padding, or packing with cu_seqlens), which is all causal LMs need.

Run the parity tests: `python -m pytest tests/test_model.py`; speed: `python bench.py`.
"""

import contextlib
import json
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

try:  # optional: used only on CUDA with 16-bit tensors
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
except ImportError:
    flash_attn_varlen_func = flash_attn_with_kvcache = None


class CheckpointError(ValueError):
    """A checkpoint directory or config that cannot be loaded; the message names the file or key."""


# -----------------------------------------------------------------------------
# Config: read from an HF config.json; anything we do not implement raises.

SUPPORTED = {"qwen2", "qwen3", "llama"}


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2: True; Llama/Qwen3: config.attention_bias
    o_bias: bool  # Llama/Qwen3: config.attention_bias; Qwen2: False
    mlp_bias: bool
    qk_norm: bool  # Qwen3: RMSNorm on each head of q and k before RoPE
    model_type: str
    hf: dict = field(default_factory=dict, repr=False)  # the original config.json, saved back as is

    @classmethod
    def from_hf(cls, d, source="config.json"):
        def bad(key, why):
            raise CheckpointError(f"{source}: unsupported option {key}={d.get(key)!r} ({why})")

        mt = d.get("model_type")
        if mt not in SUPPORTED:
            bad("model_type", f"supported: {sorted(SUPPORTED)}")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if not isinstance(d.get(key), int) or d[key] <= 0:
                raise CheckpointError(f"{source}: {key} must be a positive integer, got {d.get(key)!r}")
        if d.get("hidden_act", "silu") != "silu":
            bad("hidden_act", "only silu (SwiGLU) is implemented")
        # transformers 4.x writes rope_theta + rope_scaling; 5.x writes rope_parameters.
        rope = d.get("rope_parameters") or {}
        if d.get("rope_scaling"):
            bad("rope_scaling", "RoPE scaling is not implemented")
        if rope.get("rope_type", "default") != "default":
            raise CheckpointError(f"{source}: unsupported option rope_parameters.rope_type={rope['rope_type']!r} "
                                  "(only default RoPE is implemented)")
        if d.get("use_sliding_window"):
            bad("use_sliding_window", "sliding-window attention is not implemented")
        if any(t != "full_attention" for t in d.get("layer_types") or []):
            bad("layer_types", "only full_attention layers are implemented")
        if d.get("attention_dropout", 0.0):
            bad("attention_dropout", "dropout is not implemented")
        n_head, n_kv = d["num_attention_heads"], d.get("num_key_value_heads") or d["num_attention_heads"]
        if n_head % n_kv:
            bad("num_key_value_heads", f"must divide num_attention_heads={n_head}")
        head_dim = d.get("head_dim") or d["hidden_size"] // n_head
        attn_bias = bool(d.get("attention_bias", False))
        return cls(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"], num_attention_heads=n_head, num_key_value_heads=n_kv,
            head_dim=head_dim, rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
            max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=True if mt == "qwen2" else attn_bias, o_bias=False if mt == "qwen2" else attn_bias,
            mlp_bias=bool(d.get("mlp_bias", False)), qk_norm=(mt == "qwen3"), model_type=mt, hf=dict(d))


# -----------------------------------------------------------------------------
# Attention: one entry point, two kernels.

@dataclass
class KVCache:
    """Static per-layer key/value buffers. Row b holds `seqlens[b]` valid tokens.

    k and v are always indexed (L, B, T_max, H_kv, D). Physically they are stored
    heads-first, (L, B, H_kv, T_max, D), for the matmul decode below (contiguous
    (T, D) blocks, 2x faster on CPU), and time-first for flash-attn, which needs it.
    """
    k: torch.Tensor  # (L, B, T_max, H_kv, D)
    v: torch.Tensor  # (L, B, T_max, H_kv, D)
    seqlens: torch.Tensor  # (B,) int32
    heads_first: bool

    @classmethod
    def empty(cls, cfg, batch, max_len, device, dtype, heads_first=True):
        L, H, D = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
        # zeros, not empty: masked-out slots still enter (weights @ V), and 0 * NaN garbage = NaN
        kv = [torch.zeros((L, batch, H, max_len, D) if heads_first else (L, batch, max_len, H, D), device=device,
                          dtype=dtype) for _ in range(2)]
        if heads_first:
            kv = [x.transpose(2, 3) for x in kv]
        return cls(*kv, torch.zeros(batch, device=device, dtype=torch.int32), heads_first)


@dataclass
class AttnContext:
    """Everything attention needs for one forward, passed down explicitly (no globals).

    Three layouts of the input (B, T):
    - padded:  B right-padded fresh sequences, causal (SDPA path; prefill and scoring).
    - packed:  B == 1 row holding several fresh sequences back to back, `cu_seqlens`
               gives their boundaries (flash varlen path; prefill and scoring).
    - extend:  T new tokens per row appended to a KV cache that already holds
               `cache.seqlens[b]` tokens (decode; flash with-kvcache, or matmul attention).
    """
    backend: str  # "flash" | "sdpa"
    pos: torch.Tensor  # (B, T) RoPE position of every token
    cache: KVCache | None = None
    extend: bool = False
    cu_seqlens: torch.Tensor | None = None  # (n+1,) int32, packed layout only
    max_seqlen: int = 0
    cache_rows: torch.Tensor | None = None  # fresh layouts with a cache: cache row of each row (padded)
    cache_cols: torch.Tensor | None = None  # or cache row and slot of every token (packed)
    bias: torch.Tensor | None = None  # SDPA-backend extend: (B, 1, T, S) float32, 0 where visible, -inf not


DECODE_SDPA = None  # decode attention through one SDPA kernel: None = on CUDA (tests force it on CPU)


def attention(q, k, v, layer, ctx):
    """q: (B, T, H, D); k, v: (B, T, H_kv, D), RoPE applied. Returns (B, T, H, D).

    Writes k, v into ctx.cache (if any) for layer `layer`, in the cache's dtype (under autocast v, and
    k unless RoPE promoted it, come out of the projections in bfloat16; the cache has the weights' dtype)."""
    B, T = q.shape[:2]
    c = ctx.cache
    if c is not None:  # (no-ops without autocast)
        k, v = k.to(c.k.dtype), v.to(c.v.dtype)
    if ctx.extend:  # append to the cache, attend over it
        if ctx.backend == "flash":  # writes k, v in place at cache_seqlens[b]
            return flash_attn_with_kvcache(q, c.k[layer], c.v[layer], k, v, cache_seqlens=c.seqlens, causal=True)
        slots = c.seqlens.long()[:, None] + torch.arange(T, device=q.device)  # (B, T)
        rows = torch.arange(B, device=q.device)[:, None]
        c.k[layer][rows, slots], c.v[layer][rows, slots] = k, v
        # A few queries against the cache, the G query heads of each kv head folded into rows. CPU: plain
        # matmul-softmax-matmul, 2x faster than SDPA's CPU kernel for one query per row. CUDA: one fused SDPA
        # kernel (scores in float32 inside, as transformers'; the matmul path rounds them to bf16 first).
        S, Hkv, D = ctx.bias.shape[-1], k.shape[2], q.shape[-1]
        G = q.shape[2] // Hkv
        kk, vv = c.k[layer, :, :S].transpose(1, 2), c.v[layer, :, :S].transpose(1, 2)  # (B, Hkv, S, D)
        qq = q.view(B, T, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * T, D)  # row g*T + t
        bias = ctx.bias if T == 1 else ctx.bias.repeat(1, 1, G, 1)  # (B, 1, G*T, S)
        if q.is_cuda if DECODE_SDPA is None else DECODE_SDPA:
            o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=bias.to(qq.dtype))  # (B, Hkv, G*T, D)
        else:
            att = ((qq @ kk.transpose(-1, -2)).float() * D ** -0.5 + bias).softmax(-1)  # (B, Hkv, G*T, S)
            o = att.to(vv.dtype) @ vv  # (B, Hkv, G*T, D)
        return o.view(B, Hkv, G, T, D).permute(0, 3, 1, 2, 4).reshape(B, T, Hkv * G, D)
    if ctx.cu_seqlens is not None:  # packed fresh sequences (flash varlen)
        if c is not None:
            c.k[layer][ctx.cache_rows, ctx.cache_cols], c.v[layer][ctx.cache_rows, ctx.cache_cols] = k[0], v[0]
        o = flash_attn_varlen_func(q[0], k[0], v[0], ctx.cu_seqlens, ctx.cu_seqlens, ctx.max_seqlen,
                                   ctx.max_seqlen, causal=True)
        return o[None]
    # padded fresh sequences: right padding means the causal mask alone keeps every
    # real query away from padding keys; padded query rows are garbage nobody reads.
    if c is not None:  # cache rows of this batch (all when cache_rows is None)
        rows = slice(None) if ctx.cache_rows is None else ctx.cache_rows
        c.k[layer, rows, :T], c.v[layer, rows, :T] = k, v
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True, enable_gqa=True)
    return o.transpose(1, 2)


_announced = set()


def resolve_backend(choice, x):
    """The attention path for tensors like x; prints one line the first time each path is taken."""
    if choice not in ("auto", "flash", "sdpa"):
        raise ValueError(f"attn_backend must be auto, flash or sdpa, got {choice!r}")
    if choice == "flash" and flash_attn_varlen_func is None:
        raise RuntimeError("attn_backend='flash' forced but flash-attn is not installed (pip install flash-attn)")
    can_flash = flash_attn_varlen_func is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
    backend = choice if choice in ("flash", "sdpa") else ("flash" if can_flash else "sdpa")
    if backend not in _announced:
        _announced.add(backend)
        print(f"[model] attention: {'flash-attn (varlen prefill, with-kvcache decode)' if backend == 'flash' else 'torch SDPA'}"
              f" ({'forced' if choice != 'auto' else 'auto'}; {x.device}, {x.dtype})", flush=True)
    return backend


# -----------------------------------------------------------------------------
# The decoder. Names mirror transformers so checkpoint keys map one to one.

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # normalise in float32, scale in the input dtype (as transformers)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def apply_rope(x, cos, sin):
    """x: (B, T, H, D); cos, sin: (B, T, 1, D). Rotate-half convention (HF, non-interleaved)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        C = cfg.hidden_size
        self.q_proj = nn.Linear(C, self.n_head * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(C, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(C, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.hd, C, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, layer, ctx):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd)  # (B, T, H_kv, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = attention(q, k, v, layer, ctx)  # (B, T, H, D)
        return self.o_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, I, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(C, I, bias=b), nn.Linear(C, I, bias=b), nn.Linear(I, C, bias=b)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, layer, ctx):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layer, ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):  # transformers' `model.` prefix
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Transformer(nn.Module):
    """Causal LM. forward(ids, ctx) -> final hidden states, or log-probs / logits at chosen positions."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.attn_backend = "auto"
        self.grad_checkpointing = False  # activation checkpointing per decoder layer (training only)
        self.logit_chunk = 1024  # response tokens per full-vocabulary logits chunk in score()
        self.score_buckets = True  # False: score() in one padded forward (FSDP2: the same forwards on every rank)

    def rope_tables(self, device, dtype):
        """cos/sin for every position, computed in float32 the way transformers does (cat(f, f)), then kept in
        the weights' dtype (transformers casts them to it on every forward; we cast once)."""
        cfg = self.config
        if getattr(self, "_rope", None) is None or self._rope[0].device != torch.device(device) \
                or self._rope[0].dtype != dtype:
            inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device=device).float() / cfg.head_dim))
            f = torch.outer(torch.arange(cfg.max_position_embeddings, device=device).float(), inv)
            emb = torch.cat((f, f), dim=-1)  # (P, D)
            self._rope = (emb.cos().to(dtype), emb.sin().to(dtype))
        return self._rope

    def forward(self, ids, ctx, out_idx=None, targets=None, temperature=1.0):
        """ids: (B, T). out_idx: flat indices into the B*T positions whose outputs are wanted.

        Returns the final hidden states (B, T, C) when out_idx is None; else the
        logits (N, V) at those positions; or, given targets (N,), the pair
        (log-prob of each target, entropy) of softmax(logits / temperature),
        computed chunk by chunk so that at most `logit_chunk` rows of
        full-vocabulary float32 logits exist at once.
        """
        cos, sin = self.rope_tables(ids.device, self.model.embed_tokens.weight.dtype)
        cos, sin = cos[ctx.pos][:, :, None], sin[ctx.pos][:, :, None]  # (B, T, 1, D)
        x = self.model.embed_tokens(ids)
        for i, layer in enumerate(self.model.layers):
            if self.grad_checkpointing and torch.is_grad_enabled() and ctx.cache is None:
                x = checkpoint(layer, x, cos, sin, i, ctx, use_reentrant=False)
            else:
                x = layer(x, cos, sin, i, ctx)
        x = self.model.norm(x)
        if out_idx is None:
            return x
        h = x.flatten(0, 1)[out_idx]  # (N, C)
        if targets is None:
            return self.lm_head(h).float()
        lp, ent = [], []
        for s in range(0, h.shape[0], self.logit_chunk):
            args = (h[s:s + self.logit_chunk], self.lm_head.weight, targets[s:s + self.logit_chunk], temperature)
            out = checkpoint(_logprob_entropy, *args, use_reentrant=False) if torch.is_grad_enabled() else _logprob_entropy(*args)
            lp.append(out[0]), ent.append(out[1])
        return torch.cat(lp), torch.cat(ent)


def _logprob_entropy(h, w, y, temperature=1.0):
    """Full-vocabulary log-softmax for a chunk of rows; keeps only two floats per row."""
    logp = F.log_softmax(F.linear(h, w).float() / temperature, dim=-1)  # (n, V)
    return logp.gather(-1, y[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


# -----------------------------------------------------------------------------
# LoRA (Hu et al. 2021): trainable low-rank adapters on the attention and MLP projections, base frozen.

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Linear):
    """nn.Linear plus a low-rank update: y = x W^T + b + (alpha / r) * B A dropout(x). A and B are float32 (the
    input is cast to them, as PEFT does), B starts at zero: the adapted model starts as the base model."""
    lora_enabled = True  # adapters_off() switches it per module

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if not self.lora_enabled:
            return y
        return y + (self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))) * self.lora_scale).to(y.dtype)


def add_lora(model, rank, alpha, dropout=0.0, seed=0):
    """Give every LORA_TARGETS projection an adapter (the nn.Linear becomes a LoRALinear in place, its weight
    not copied) and freeze everything else. A: nn.Linear's init, U(+-1/sqrt(in)); B: zeros. Returns model."""
    assert rank > 0, "LoRA rank must be positive"
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if name.rsplit(".", 1)[-1] in LORA_TARGETS and type(m) is nn.Linear:
            m.__class__ = LoRALinear
            m.lora_A = nn.Linear(m.in_features, rank, bias=False, device=m.weight.device, dtype=torch.float32)
            m.lora_B = nn.Linear(rank, m.out_features, bias=False, device=m.weight.device, dtype=torch.float32)
            with torch.no_grad():
                bound = m.in_features ** -0.5
                m.lora_A.weight.copy_(torch.rand(m.lora_A.weight.shape, generator=g) * 2 * bound - bound)
                m.lora_B.weight.zero_()
            m.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
            m.lora_scale = alpha / rank
    model.lora = dict(rank=rank, alpha=alpha, dropout=dropout)
    return model


@contextlib.contextmanager
def adapters_off(model):
    """The base model inside the block (the KL reference without a second copy). Use it for no-grad forwards:
    activation checkpointing would recompute a forward with grad after the block, adapters on."""
    mods = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for m in mods:
        m.lora_enabled = False
    try:
        yield model
    finally:
        for m in mods:
            m.lora_enabled = True


class AdaptersOff:
    """The base model of a LoRA model, for score() (the KL reference): calls run with every adapter skipped."""

    def __init__(self, model):
        self.module = model  # score() and generate() look through `.module`, as for DDP

    def __call__(self, *args, **kw):
        with adapters_off(self.module):
            return self.module(*args, **kw)


def merged_state(model, state=None):
    """The HF state dict with each adapter folded into its weight, W + (alpha / r) B A (in float32, then the
    weight's dtype), and no adapter keys. state: the model's state dict if not model.state_dict()."""
    state = dict(model.state_dict() if state is None else state)
    for key in [k for k in state if k.endswith(".lora_A.weight")]:
        base = key[:-len(".lora_A.weight")]
        A, B, W = state.pop(key), state.pop(base + ".lora_B.weight"), state[base + ".weight"]
        scale = model.lora["alpha"] / model.lora["rank"]
        state[base + ".weight"] = (W.float() + scale * (B.float() @ A.float())).to(W.dtype)
    return state


def save_adapters(model, path):
    """adapters.safetensors (the A and B of every projection) + adapters.json (rank, alpha, dropout)."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if ".lora_" in k}
    save_file(state, os.path.join(path, "adapters.safetensors.tmp"), metadata={"format": "pt"})
    os.replace(os.path.join(path, "adapters.safetensors.tmp"), os.path.join(path, "adapters.safetensors"))
    _write_json(os.path.join(path, "adapters.json"), model.lora)


def load_adapters(model, path):
    """Restore adapters saved by save_adapters (adding them first if the model has none), strictly."""
    from safetensors.torch import load_file

    spec = _read_json(os.path.join(path, "adapters.json"))
    if getattr(model, "lora", None) is None:
        add_lora(model, spec["rank"], spec["alpha"], spec.get("dropout", 0.0))
    if {k: model.lora[k] for k in ("rank", "alpha")} != {k: spec[k] for k in ("rank", "alpha")}:
        raise CheckpointError(f"{path}/adapters.json: rank/alpha {spec} differ from the model's {model.lora}")
    state = load_file(os.path.join(path, "adapters.safetensors"))
    own = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
    if set(state) != set(own):
        raise CheckpointError(f"{path}/adapters.safetensors: keys differ from the model's adapters "
                              f"({len(set(state) ^ set(own))} mismatched, e.g. {sorted(set(state) ^ set(own))[0]!r})")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return model


# -----------------------------------------------------------------------------
# Loading and saving HF checkpoints.

def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def load(path, device="cpu", dtype=None, attn_backend="auto"):
    """Load a local HF checkpoint directory strictly. dtype: None keeps the checkpoint's dtype."""
    from safetensors import safe_open

    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: checkpoint directory not found")
    cfg = ModelConfig.from_hf(_read_json(os.path.join(path, "config.json")), os.path.join(path, "config.json"))
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no weight_map")
        files = sorted(set(weight_map.values()))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json "
                              f"(only safetensors checkpoints are supported)")
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: v for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
    state = {}
    for fname in files:
        fpath = os.path.join(path, fname)
        if not os.path.exists(fpath):
            raise CheckpointError(f"{fpath}: shard listed in the index is missing")
        try:
            with safe_open(fpath, framework="pt", device=str(device)) as f:
                for key in f.keys():
                    if cfg.tie_word_embeddings and key == "lm_head.weight":
                        continue  # redundant copy of the tied embedding (transformers ignores it too)
                    if key not in expected:
                        raise CheckpointError(f"{fpath}: unexpected tensor {key!r} (not a parameter of {cfg.model_type})")
                    t = f.get_tensor(key)
                    if tuple(t.shape) != tuple(expected[key].shape):
                        raise CheckpointError(f"{fpath}: tensor {key!r} has shape {tuple(t.shape)}, "
                                              f"config.json implies {tuple(expected[key].shape)}")
                    state[key] = t.to(dtype) if dtype is not None else t
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types for truncated / corrupt files
            raise CheckpointError(f"{fpath}: cannot read safetensors file ({type(e).__name__}: {e})") from None
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {len(missing)} tensor(s), e.g. {missing[0]!r}")
    model.load_state_dict(state, strict=not cfg.tie_word_embeddings, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.attn_backend = attn_backend
    return model.eval()


def save(model, path, max_shard_bytes=5 * 2**30, state=None):
    """Write config.json + safetensors (sharded above max_shard_bytes) in HF format, each file atomically,
    LoRA adapters merged into their weights. state: the model's state dict if not model.state_dict() (e.g.
    the full one gathered from FSDP2 shards)."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    cfg = model.config
    if getattr(model, "lora", None):  # adapters merged: a plain HF checkpoint
        state = merged_state(model, state)
    state = {k: v.detach().contiguous().cpu() for k, v in (model.state_dict() if state is None else state).items()
             if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    shards, cur, size = [], {}, 0
    for k, t in state.items():
        n = t.numel() * t.element_size()
        if cur and size + n > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = t, size + n
    shards.append(cur)
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, os.path.join(path, name + ".tmp"), metadata={"format": "pt"})
        os.replace(os.path.join(path, name + ".tmp"), os.path.join(path, name))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        _write_json(os.path.join(path, "model.safetensors.index.json"), index)
    hf = dict(cfg.hf, dtype=str(next(iter(state.values())).dtype).removeprefix("torch."))
    hf.pop("torch_dtype", None)
    _write_json(os.path.join(path, "config.json"), hf)


def _write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def config_dict(model_type="qwen2", **kw):
    """An HF config.json dict for a new model (e.g. the embedded tiny policy)."""
    d = dict(model_type=model_type, architectures=[{"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
             "llama": "LlamaForCausalLM"}[model_type]], hidden_act="silu", rms_norm_eps=1e-6,
             max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
             tie_word_embeddings=True, attention_dropout=0.0, use_cache=True)
    d.update(kw)
    return d


def init_weights(model, seed=0, std=0.02):
    """Random init for a model built from config (normal(0, std) weights, zero biases, unit norms)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        with torch.no_grad():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


# -----------------------------------------------------------------------------
# Scoring for training: log-probs and entropies of response tokens.

def _pad(seqs, device, fill=0):
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out.to(device)


def _packed_context(backend, lens, device, cache=None, rows=None):
    """Positions and cu_seqlens for sequences of `lens` packed into one row."""
    lens_t = torch.as_tensor(lens, dtype=torch.int32, device=device)
    cu = F.pad(lens_t.cumsum(0, dtype=torch.int32), (1, 0))
    seq = torch.repeat_interleave(torch.arange(len(lens), device=device), lens_t.long())  # (N,)
    pos = torch.arange(int(cu[-1]), device=device) - cu[:-1].long()[seq]  # (N,)
    ctx = AttnContext(backend, pos[None], cache=cache, cu_seqlens=cu, max_seqlen=max(lens))
    if cache is not None:  # cache row and slot of every packed token
        ctx.cache_rows, ctx.cache_cols = (seq if rows is None else rows[seq]), pos
    return ctx


def buckets(lens, max_tokens, min_fill=0.8):
    """Split indices into groups of similar length, longest first: a group closes when adding the next
    sequence would pass max_tokens padded tokens or pad it below min_fill of the group's longest."""
    groups = []
    for i in sorted(range(len(lens)), key=lambda i: -lens[i]):
        g = groups[-1] if groups else None
        if g and (len(g) + 1) * lens[g[0]] <= max_tokens and lens[i] >= min_fill * lens[g[0]]:
            g.append(i)
        else:
            groups.append([i])
    return groups


def fresh_context(backend, seqs, device, cache=None, rows=None):
    """Token ids and AttnContext for fresh sequences: packed into one row (flash) or right-padded (SDPA).
    Also returns the flat index of each sequence's first token. With a cache, row i goes to cache row rows[i]."""
    lens = [len(s) for s in seqs]
    if backend == "flash":
        ids = torch.as_tensor([t for s in seqs for t in s], device=device)[None]  # (1, N)
        ctx = _packed_context(backend, lens, device, cache, rows)
        return ids, ctx, ctx.cu_seqlens[:-1].long()
    ids = _pad(seqs, device)  # (B, T)
    ctx = AttnContext(backend, torch.arange(ids.shape[1], device=device).expand_as(ids), cache=cache, cache_rows=rows)
    return ids, ctx, torch.arange(len(seqs), device=device) * ids.shape[1]


def response_positions(prompt_lens, response_lens, starts):
    """For sequences laid out at flat offsets `starts` (fresh_context), each as prompt + response: per response
    token (N in all) its sequence seq, its column col in the response, and the flat position idx whose output
    predicts it (the token at flat position j is predicted by the output at j - 1). -> three (N,) tensors."""
    dev = starts.device
    n_resp = torch.as_tensor(response_lens, device=dev)
    seq = torch.repeat_interleave(torch.arange(len(response_lens), device=dev), n_resp)  # (N,) which sequence
    col = torch.arange(int(n_resp.sum()), device=dev) - F.pad(n_resp.cumsum(0), (1, 0))[:-1][seq]  # (N,)
    idx = starts[seq] + torch.as_tensor(prompt_lens, device=dev)[seq] + col - 1  # (N,)
    return seq, col, idx


def score(model, prompts, responses, bucket_tokens=16384, temperature=1.0):
    """Log-probs and entropies of each response token given its prompt, with gradients, under
    softmax(logits / temperature) (RL trains the policy it samples from, as verl does).

    prompts, responses: lists of token-id lists. Returns (logp, entropy), each
    (B, R_max) float32, zero beyond each response's length. Only positions that
    predict response tokens reach the vocabulary projection. flash: sequences
    packed back to back (no padding); SDPA: length-sorted buckets (little padding).
    """
    assert len(prompts) == len(responses) and len(prompts) > 0, "need one response per prompt"
    assert all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
    inner = getattr(model, "module", model)  # DDP wrapper
    dev = inner.model.embed_tokens.weight.device
    backend = resolve_backend(inner.attn_backend, inner.model.embed_tokens.weight)
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
    R = max(1, max(len(r) for r in responses))
    logp, ent = torch.zeros(len(seqs), R, device=dev), torch.zeros(len(seqs), R, device=dev)
    lens = [len(s) for s in seqs]
    groups = buckets(lens, bucket_tokens) if backend == "sdpa" and inner.score_buckets else [list(range(len(seqs)))]
    for g in groups:
        g = [i for i in g if responses[i]]
        if not g:
            continue
        ids, ctx, starts = fresh_context(backend, [seqs[i] for i in g], dev)
        seq, col, idx = response_positions([len(prompts[i]) for i in g], [len(responses[i]) for i in g], starts)
        lp, h = model(ids, ctx, out_idx=idx, targets=ids.flatten()[idx + 1], temperature=temperature)
        rows = torch.as_tensor(g, device=dev)[seq]
        logp, ent = logp.index_put((rows, col), lp), ent.index_put((rows, col), h)
    return logp, ent


def __getattr__(name):  # model.generate, model.sample, model.Generation live in engine.py
    if name in ("generate", "sample", "Generation", "release"):
        import engine
        return getattr(engine, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
