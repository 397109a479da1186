"""
distill.py: SIRI phase 2, internalization (docs/algorithm.md, "Internalization"): cross-context
self-distillation of a skill in the prompt into the plain-prompt policy.
Pure functions: tensors and lists in, tensors out.

Contract
- Teacher = the current weights with the skill block in the prompt, under
  torch.no_grad (detached). Student = the same weights on the same prompt with
  exactly the skill block removed (`strip_skill`). Both score the response
  tokens that were sampled under the skill context.
- `vocab_logprobs(model, prompts, responses, temperature)` -> (B, R, V) log
  softmax(logits / T) at every response position, through model.py's forward.
- `gate_weights(...)` -> (B, R) token weights, `distill_loss(...)` -> (loss,
  metrics), `lambda_schedule(k)` -> the coefficient of L_int.

The math, per response token t of sample i (p_T teacher, p_S student):
  w_t   = 1[skill used by i] * 1[delta_g(i) > 0] * 1[action token t] * clip(A_t, 0, c)
  KL_t  = sum_v p_T(v) (log p_T(v) - log p_S(v))          full vocabulary, KL(teacher || student)
  L_int = sum_t w_t KL_t / sum_t w_t                      kind="kl" (default)
        = sum_t w_t (-log p_S(y_t)) / sum_t w_t           kind="nll": no teacher forward
  L     = L_base + beta * L_KL(ref) + lambda(k) * L_int,  lambda(k) = lambda_max * min(1, (k + 1) / K)
delta_g(i) = mean reward of the skill half - mean reward of the plain half of
i's group (phase 1's paired validation); A_t the base optimizer's advantage.

Usage, per micro-batch b of skill-augmented step samples (only rows with any
w > 0 need the two forwards; block_of: skill id -> the block's token ids):
  w = gate_weights(used, delta, adv, mask)
  with torch.no_grad(): lt = vocab_logprobs(model, [x.prompt for x in b], resp, T)
  ls = vocab_logprobs(model, [strip_skill(x.prompt, block_of[x.skill]) for x in b], resp, T)
  loss_int, m = distill_loss(ls, lt, w, total_weight=W)  # W = sum of w over the mini-batch
The teacher is recomputed per micro-batch with the weights of that moment (no
(B, R, V) tensor is kept across a whole iteration).

Decisions and departures (the paper does not publish lambda_max, K, c or L_int's form)
1. L_int is a token-level, full-vocabulary forward KL(teacher || student) at
   the gated tokens, normalised by the sum of the weights (not by the token
   count): a batch with few gated tokens weighs as much as one with many.
2. Defaults lambda_max = 1.0, K = 2 (`ramp`), c = 1.0 (`cap`, in the units of
   the normalised advantage). The ramp starts at lambda_max / K, not 0, on the
   first phase-2 iteration (k = 0): a zero coefficient would waste it. k < 0
   (before phase 2) gives 0.
3. "Action token" is every token the policy sampled (response mask 1) by
   default. In the think format pass `action_mask` (1 on the tokens of the
   <action>...</action> span) to distil only the action, not the reasoning.
4. Teacher and student use the same temperature T (default 1.0); it should
   be the sampling temperature, as for the RL log-probs (model.py).
5. Memory: vocab_logprobs materialises (B, R, V) float32 for teacher and
   student (plus the student's autograd copy); at V = 152k the caller must keep
   micro-batches small. A fused chunked KL would avoid it; not needed yet.
6. strip_skill finds the block's ids in the teacher prompt (rollout.Step keeps
   the prompt ids and the skill's id, not where the block sits) and requires
   exactly one occurrence, else it raises.

Run the tests: `python -m pytest tests/test_distill.py -q`.
"""

import torch
import torch.nn.functional as F

import model as M

# -----------------------------------------------------------------------------
# contexts and log-probs


def strip_skill(prompt, block):
    """Student prompt: the teacher prompt ids with exactly the skill block's ids removed.
    block = the ids Prompter spliced in, i.e. tokenizer(skill_text, add_special_tokens=False)["input_ids"]."""
    prompt, block = list(prompt), list(block)
    L = len(block)
    assert L > 0, "empty skill block"
    hits = [i for i in range(len(prompt) - L + 1) if prompt[i] == block[0] and prompt[i:i + L] == block]
    if len(hits) != 1:
        raise ValueError(f"skill block found {len(hits)} times in the prompt (need exactly 1)")
    return prompt[:hits[0]] + prompt[hits[0] + L:]


def vocab_logprobs(model, prompts, responses, temperature=1.0, bucket_tokens=16384):
    """log softmax(logits / T) over the whole vocabulary at each position that predicts a response token.

    prompts, responses: lists of token-id lists. Returns (B, R_max, V) float32, zero beyond each response.
    Gradients flow unless called under torch.no_grad (the teacher). Same bucketing / packing as model.score.
    """
    assert len(prompts) == len(responses) and len(prompts) > 0, "need one response per prompt"
    assert all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
    inner = getattr(model, "module", model)  # DDP wrapper
    dev = inner.model.embed_tokens.weight.device
    backend = M.resolve_backend(inner.attn_backend, inner.model.embed_tokens.weight)
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
    R = max(1, max(len(r) for r in responses))
    out = torch.zeros(len(seqs), R, inner.config.vocab_size, device=dev)  # (B, R, V)
    groups = (M.buckets([len(s) for s in seqs], bucket_tokens) if backend == "sdpa" and inner.score_buckets
              else [list(range(len(seqs)))])
    for g in groups:
        g = [i for i in g if responses[i]]
        if not g:
            continue
        ids, ctx, starts = M.fresh_context(backend, [seqs[i] for i in g], dev)
        seq, col, idx = M.response_positions([len(prompts[i]) for i in g], [len(responses[i]) for i in g], starts)
        logits = model(ids, ctx, out_idx=idx)  # (N, V) float32, targets=None: raw logits
        # in place: one (B, R, V) buffer, not a copy per bucket (autograd records the writes)
        out.index_put_((torch.as_tensor(g, device=dev)[seq], col), F.log_softmax(logits / temperature, -1))
    return out


# -----------------------------------------------------------------------------
# gates, loss, schedule


def gate_weights(skill_used, delta_g, adv, mask, action_mask=None, cap=1.0):
    """w = 1[skill used] * 1[delta_g > 0] * 1[action token] * clip(A, 0, cap), per token. -> (B, R) float32.

    skill_used (B,) bools; delta_g (B,) floats, None or NaN where no skill (gate closed); adv (B,) per sample
    or (B, R) per token; mask (B, R) 1 on sampled tokens; action_mask (B, R), optional, 1 on the tokens of
    the <action>...</action> span (think format). Everything is a constant: no gradient flows through w.
    """
    m = torch.as_tensor(mask).bool()  # (B, R)
    dev = m.device
    used = torch.as_tensor([bool(u) for u in skill_used], device=dev)  # (B,)
    # None / NaN (no skill in the group, or no plain half to compare with) close the gate: NaN > 0 is False
    helped = torch.tensor([d is not None and float(d) > 0 for d in delta_g], device=dev)  # (B,)
    A = torch.as_tensor(adv, device=dev).detach().float()
    A = A[:, None].expand(m.shape) if A.dim() == 1 else A  # (B, R) the step's advantage on each of its tokens
    assert used.shape == helped.shape == m.shape[:1] and A.shape == m.shape, "per-sample (B,) and per-token (B, R)"
    gate = m & (used & helped)[:, None]  # (B, R) only a skill that helped its group teaches
    if action_mask is not None:
        gate = gate & torch.as_tensor(action_mask, device=dev).bool()
    # clip(A, 0, c): only better-than-baseline steps teach, and no single step dominates
    return torch.where(gate, A.clamp(0.0, cap), torch.zeros_like(A))  # (B, R)


def distill_loss(student_logp, teacher_logp, weights, kind="kl", total_weight=None, targets=None, mask=None):
    """Weighted internalization loss (module docstring has the math). -> (loss, metrics).

    kind="kl":  student_logp, teacher_logp (B, R, V) full-vocabulary log-probs (vocab_logprobs); the teacher is
                detached here whatever the caller did.
    kind="nll": student_logp (B, R) log-probs of the sampled tokens (model.score), or (B, R, V) with targets
                (B, R) the sampled ids; teacher_logp is ignored (pass None).
    weights (B, R) from gate_weights. The loss is sum(w * l) / total_weight (default w.sum()): pass the weight
    sum of the whole mini-batch and micro-batch losses add up to its exact weighted mean. Tokens with w = 0
    are selected away before any math, so they get exactly zero gradient even if their logits hold inf/nan.
    mask (B, R), optional: the response tokens, for the gate_frac metric.
    """
    assert kind in ("kl", "nll"), f"kind must be 'kl' or 'nll', got {kind!r}"
    g = weights.detach() > 0  # (B, R) gated tokens
    assert student_logp.shape[:2] == g.shape, f"student {tuple(student_logp.shape)} vs weights {tuple(g.shape)}"
    dt = torch.promote_types(student_logp.dtype, torch.float32)
    w = weights.detach()[g].to(dt)  # (n,)
    if kind == "kl":
        assert teacher_logp is not None and teacher_logp.shape == student_logp.shape, "teacher (B, R, V) like student"
        # boolean indexing first: rows with w = 0 never enter the math, and their backward is exactly 0
        ls, lt = student_logp[g].to(dt), teacher_logp.detach()[g].to(dt)  # (n, V)
        pt = lt.exp()
        # p_T (log p_T - log p_S), with 0 log 0 = 0 where the teacher gives a token no mass
        per = torch.where(pt > 0, pt * (lt - ls), torch.zeros_like(pt)).sum(-1)  # (n,) KL_t >= 0
    else:
        ls = student_logp[g].to(dt)  # (n,) or (n, V)
        if ls.dim() == 2:
            assert targets is not None, "nll on (B, R, V) log-probs needs the sampled ids"
            ls = ls.gather(-1, torch.as_tensor(targets, device=ls.device)[g][:, None]).squeeze(-1)
        per = -ls  # (n,) NLL of the sampled token under the student context
    wsum = w.sum()
    denom = wsum.clamp_min(1e-12) if total_weight is None else total_weight
    loss = (w * per).sum() / denom
    n = g.sum().to(dt)
    n_resp = torch.as_tensor(mask, device=g.device).bool().sum().to(dt) if mask is not None else n.new_tensor(g.numel())
    mean = lambda x, d: x.detach().sum() / d.clamp_min(1e-12)
    stats = torch.stack([loss.detach(), mean(per, n), mean(w * per, wsum), wsum, n, mean(n, n_resp)]).tolist()  # 1 sync
    names = [f"{kind}_loss", kind, f"{kind}_weighted", "weight_sum", "n_gated", "gate_frac"]
    return loss, dict(zip(names, stats))  # kind: mean over gated tokens; kind_weighted: w-weighted mean


def lambda_schedule(k, lambda_max=1.0, ramp=2):
    """lambda(k) for phase-2 iteration k (0-based): lambda_max * min(1, (k + 1) / ramp); 0 for k < 0.
    So k = 0 gives lambda_max / ramp and k >= ramp - 1 gives lambda_max (departure 2)."""
    if k < 0:
        return 0.0
    return lambda_max * min(1.0, (k + 1) / ramp) if ramp > 0 else lambda_max
