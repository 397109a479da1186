"""
update.py: one PPO epoch over an iteration's step samples, plus phase 2's internalization loss
(docs/algorithm.md, "GiGPO" and "Internalization").

    metrics, n_backward, streak = update.train_step(policy, ref, opt, steps, adv, args, rng, delta, blocks, lam, spare)

The samples are shuffled and cut into --updates mini-batches; each mini-batch is accumulated over micro-batches
of at most --micro-tokens tokens (`micro_batches`) so that the token mean is exact whatever the split, then
clipped and stepped once. In phase 2 each micro-batch adds lambda x L_int (distill.py) on its samples that pass
the gates, in the same gradient:

    L = L_base + beta L_KL(ref) + lambda(k) L_int

Under torchrun (parallel.py) the normalisers are global sums and every rank makes the same number of forward
and backward passes, so DDP and FSDP2 never wait on a rank that ran out of samples. A mini-batch with a
non-finite loss or gradient norm is skipped on every rank alike.

The constants below are GiGPO's (PPO clip 0.2 both sides, dual clip 3.0, entropy bonus 0.001, AdamW weight
decay 0.01, gradient clip 1.0) and SIRI's unpublished choices for L_int (full-vocabulary KL, advantage cap
c = 1.0); nobody needs them as flags. L_int's form is the flag --distill: "kl" (default), or "nll", the weighted
NLL of the sampled token under the student context (no teacher forward).
"""

import math

import torch

import distill as D
import gigpo
import model as M
import parallel as P

CLIP = 0.2            # PPO ratio clip, both sides
DUAL_CLIP = 3.0       # dual-clip bound for negative advantages
ENTROPY_COEF = 0.001  # entropy bonus
WEIGHT_DECAY = 0.01   # AdamW
GRAD_CLIP = 1.0       # gradient norm clip per mini-batch
ADV_CAP = 1.0         # c in the distillation token weight clip(A, 0, c)


def micro_batches(idx, lengths, budget):
    """Split sample indices into consecutive chunks of at most `budget` tokens (at least one sample each)."""
    out, cur, n = [], [], 0
    for i in idx:
        if cur and n + lengths[i] > budget:
            out.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += lengths[i]
    return out + [cur] if cur else out


def amp(a):
    return torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16, enabled=a.amp)


def optimizer(policy, lr):
    """AdamW as GiGPO's setup has it (betas 0.9 / 0.999, weight decay WEIGHT_DECAY, constant lr; --warmup ramps it)."""
    params = [p for p in policy.parameters() if p.requires_grad]  # LoRA: the adapters only
    return torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999))


def internalization_loss(policy, steps, w, blocks, total_weight, a):
    """L_int (distill.py) on skill samples: teacher = their prompts (skill block in, no gradient), student = the
    same prompts with exactly the block removed; both score the responses sampled under the skill.
    w (B, R') gate weights (R' >= the longest response); blocks: skill id -> the block's token ids (a sample
    without a skill, only ever a zero-weight filler, is its own student)."""
    resps = [s.response for s in steps]
    student = [D.strip_skill(s.prompt, blocks[s.skill]) if s.skill in blocks else s.prompt for s in steps]
    w = w[:, :max(1, max(map(len, resps)))]  # (B, R) as the log-probs below
    with amp(a):
        if a.distill == "kl":
            with torch.no_grad():
                teacher = D.vocab_logprobs(policy, [s.prompt for s in steps], resps, a.temperature)  # (B, R, V)
            stud = D.vocab_logprobs(policy, student, resps, a.temperature)  # (B, R, V)
        else:  # nll: the sampled token under the student context, no teacher forward
            teacher, stud = None, M.score(policy, student, resps, temperature=a.temperature)[0]  # (B, R)
    return D.distill_loss(stud, teacher, w.to(stud.device), kind=a.distill, total_weight=total_weight)


def gates(steps, mb, delta, adv):
    """Distillation token weights of mini-batch mb (distill.gate_weights: skill used, delta_g > 0, clip(A, 0, c)
    on every response token). -> (B_mb, R_mb)."""
    resp_mask = torch.zeros(len(mb), max(len(steps[i].response) for i in mb))  # (B_mb, R_mb)
    for j, i in enumerate(mb):
        resp_mask[j, :len(steps[i].response)] = 1
    return D.gate_weights([steps[i].skill is not None for i in mb], [delta[i] for i in mb], adv[mb], resp_mask,
                          cap=ADV_CAP)


def base_loss(policy, ref, steps, adv, a, total_tokens):
    """GiGPO's policy loss (gigpo.policy_loss: PPO clip, dual clip, entropy bonus, k3 KL to ref) of one
    micro-batch, each response under the prompt it was sampled with. -> (loss, metrics, response mask (B, R))."""
    prompts, resps = [s.prompt for s in steps], [s.response for s in steps]
    with amp(a):
        logp, ent = M.score(policy, prompts, resps, temperature=a.temperature)  # (B, R)
    mask = torch.zeros_like(logp)
    old = torch.zeros_like(logp)
    for k, s in enumerate(steps):
        mask[k, :len(resps[k])] = 1
        old[k, :len(resps[k])] = torch.tensor(s.logprobs)
    if a.recompute_old_logp:  # (on-policy: the first mini-batch's ratio is exactly 1 then)
        with torch.no_grad(), amp(a):
            old = M.score(policy, prompts, resps, temperature=a.temperature)[0]
    ref_logp = None
    if ref is not None:
        with torch.no_grad(), amp(a):
            ref_logp = M.score(ref, prompts, resps, temperature=a.temperature)[0]
    loss, m = gigpo.policy_loss(logp, old, adv.to(logp.device), mask, ref_logp=ref_logp, entropy=ent, clip_low=CLIP,
                                clip_high=CLIP, dual_clip=DUAL_CLIP, entropy_coef=ENTROPY_COEF, kl_coef=a.kl_coef,
                                total_tokens=total_tokens)
    return loss, m, mask


def optimizer_step(policy, opt, a, loss_sum, streak, what):
    """Clip the accumulated gradient and step (the learning rate warmed up over a.warmup steps). A non-finite loss
    or gradient norm skips the step on every rank alike (the norm is global, the flag reduced); a.max_bad_steps
    skips in a row stop the run. -> (gradient norm, or None when skipped; skips in a row)."""
    gn = torch.nn.utils.clip_grad_norm_(policy.parameters(), GRAD_CLIP)
    gn = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)  # FSDP2: a DTensor
    if P.all_max([float(not (math.isfinite(gn) and math.isfinite(loss_sum)))])[0] > 0:
        streak += 1
        opt.zero_grad(set_to_none=True)
        P.print0(f"skipped {what}: loss {loss_sum:.4g}, grad norm {gn:.4g} ({streak} in a row)")
        if streak >= a.max_bad_steps:
            raise SystemExit(f"stopping: {streak} optimizer updates in a row had a non-finite loss or gradient "
                             f"norm (--max-bad-steps {a.max_bad_steps}); the last checkpoint is untouched. "
                             f"Try a lower --lr, --dtype float32 or --recompute-old-logp")
        return None, streak
    n_steps = opt.state[opt.param_groups[0]["params"][0]].get("step", 0)  # survives --resume
    for group in opt.param_groups:
        group["lr"] = a.lr * min(1.0, (float(n_steps) + 1) / a.warmup) if a.warmup else a.lr
    opt.step()
    return gn, 0


def train_step(policy, ref, opt, steps, adv, a, rng, delta, blocks, lam, spare, streak=0):
    """One epoch of PPO over this rank's step samples in a.updates mini-batches. Returns (metrics averaged
    over all ranks' tokens, with skipped_updates; backward passes made; updates skipped in a row so far).

    Phase 2 (lam > 0): each mini-batch also gets lam * L_int on its samples that pass the gates (delta: per
    sample, delta_g of its group or None without a skill; blocks: skill id -> block ids), micro-batch by
    micro-batch into the same gradient before the mini-batch's optimizer step; L_int is normalised by the
    mini-batch's gate-weight sum, so the micro-batch pieces add up to it exactly.

    Across ranks (parallel.py): token and weight sums are global and the losses are scaled by W, so the
    gradient mean over ranks is the exact token mean of the whole mini-batch; every rank runs the same number
    of micro-batches, forwards and backwards: a rank short of samples runs `spare` (any Step) at weight 0.
    A mini-batch whose loss or gradient norm is not finite is skipped (no optimizer step) and counted; after
    a.max_bad_steps in a row (streak: the count carried in from earlier iterations) the run stops."""
    W_ = P.WORLD
    steps, adv, delta = steps + [spare], torch.cat([adv, torch.zeros(1)]), delta + [None]
    dummy = len(steps) - 1
    order = list(range(dummy))
    rng.shuffle(order)  # rng's last use in the iteration: its stream may differ across ranks from here on
    lengths = [len(s.prompt) + len(s.response) for s in steps]
    metrics, n_gated, n_resp, n_bwd, skipped, ratio_max = {}, 0, 0, 0, 0, 0.0
    for u in range(a.updates):
        mb = order[u * len(order) // a.updates:(u + 1) * len(order) // a.updates]
        n_tok_local = sum(len(steps[i].response) for i in mb)
        w_mb, W_local = None, 0.0
        if lam > 0 and mb:  # gates for the whole mini-batch first: their sum normalises every micro-batch's L_int
            w_mb = gates(steps, mb, delta, adv)  # (B_mb, R_mb)
            W_local, n_gated, n_resp = float(w_mb.sum()), n_gated + int((w_mb > 0).sum()), n_resp + n_tok_local
        chunks = micro_batches(mb, lengths, a.micro_tokens)
        n_tok, W, K = *P.all_sum([n_tok_local, W_local]), int(P.all_max([len(chunks)])[0])
        if n_tok == 0:  # the same on every rank
            continue
        row = {i: j for j, i in enumerate(mb)}
        loss_sum = 0.0
        opt.zero_grad(set_to_none=True)
        for chunk in chunks + [None] * (K - len(chunks)):
            scale = 1.0 if chunk else 0.0  # None: a zero-weight filler pass (equal collectives on every rank)
            chunk = chunk or [dummy]
            loss, m, mask = base_loss(policy, ref, [steps[i] for i in chunk], adv[chunk], a, n_tok / W_)
            (loss * scale).backward()
            n_bwd += 1
            loss_sum += float(loss.detach()) * scale / W_
            if lam > 0:  # L = L_base + beta L_KL(ref) + lambda L_int on the gated subset of this micro-batch; its
                # own backward (the gradients add up in .grad) frees the base graph before the (B, R, V) forwards
                gated = [i for i in chunk if i != dummy and bool((w_mb[row[i]] > 0).any())]
                wts = (w_mb[[row[i] for i in gated]] if gated else  # none here: a zero-weight pass on one sample
                       torch.zeros(1, max(1, len(steps[chunk[0]].response))))
                l_int, _ = internalization_loss(policy, [steps[i] for i in gated or chunk[:1]], wts, blocks,
                                                max(W, 1e-12) / W_, a)
                (lam * l_int).backward()
                n_bwd += 1
                loss_sum += lam * float(l_int.detach()) / W_
                metrics["distill_loss"] = metrics.get("distill_loss", 0.0) + float(l_int.detach()) / W_ / a.updates
            w = scale * float(mask.sum()) / n_tok  # this chunk's share of all ranks' tokens: summed below
            for k, v in m.items():
                if k == "ratio_max":
                    ratio_max = max(ratio_max, v if scale else 0.0)
                elif k not in ("n_tokens", "pg_loss_agg"):  # (per-call diagnostics)
                    metrics[k] = metrics.get(k, 0.0) + v * w / a.updates
        gn, streak = optimizer_step(policy, opt, a, loss_sum, streak, f"update {u + 1}/{a.updates}")
        if gn is None:
            skipped += 1
            continue
        metrics["grad_norm"] = metrics.get("grad_norm", 0.0) + gn / W_ / a.updates  # (summed over ranks below)
    keys = sorted(metrics)  # the same keys on every rank (every rank ran every pass)
    metrics = dict(zip(keys, P.all_sum([metrics[k] for k in keys])), ratio_max=P.all_max([ratio_max])[0])
    if lam > 0:  # the fraction of response tokens that taught (distill_loss: L_int per mini-batch, unscaled)
        g, r = P.all_sum([n_gated, n_resp])
        metrics["gate_frac"] = g / max(r, 1)
    metrics["skipped_updates"] = skipped
    return metrics, n_bwd, streak
