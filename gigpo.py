"""
gigpo.py: the base optimizer. GiGPO advantages (Group-in-Group Policy
Optimization, arXiv 2505.10978; docs/algorithm.md, "GiGPO") and the PPO-style policy loss
of verl / verl-agent, as pure functions: tensors and lists in, tensors out.

Contract
- One environment step = one training sample. Per sample the caller passes the
  env reward r_t, the action-format validity, the task-group id, a trajectory id
  (unique across groups), the step index and the anchor (the raw current
  observation, no history). Samples may come in any order.
- `gigpo_advantages(...)` returns (S,) tensors "adv" = A_E + omega * A_S,
  "episode_adv", "step_adv", "returns". GRPO is the same call with omega=0
  (anchors may then be None).
- `policy_loss(logp, old_logp, adv, mask, ...)` -> (loss, metrics); log-probs and
  mask are (B, T) per response token, adv is (B,) per sample or (B, T).

The math, with p = invalid_penalty and F the group normaliser:
  R_t  = r_t + gamma * R_{t+1}                    discounted return within the trajectory
  R'_t = R_t - p * 1[t invalid]                   penalty after discounting: R_{t-1} never sees it
  S_i  = sum_t r_t - p * #invalid(i)              episode score of trajectory i (undiscounted)
  A_E  = F(S_i ; scores of i's task group)        broadcast to every step of trajectory i
  A_S  = F(R'_t ; R'_u of the same group whose anchor equals t's anchor)
  A    = A_E + omega * A_S
  F(x; X) = x - mean(X)                     norm="mean"     (paper: WebShop)
          = (x - mean(X)) / (std(X) + eps)  norm="mean_std" (paper: ALFWorld), std unbiased
  F = 0 when |X| = 1 (nothing to compare with); a constant X gives 0 in both modes.

Decisions and departures (from the paper and from the verl-agent code)
1. The invalid-format penalty is a per-step negative reward applied in two
   places. In the episode score it counts once per invalid step of
   the trajectory (the paper's R(tau) = sum_t r_t, the penalty counted as a
   reward), so A_E lowers every step of that trajectory alike. In the step
   return it is subtracted after discounting, so only the invalid step's own
   R'_t, hence its A_S, carries it. verl-agent instead subtracts it from the
   invalid step's own copy of the episode score; we do not, because under
   per-trajectory statistics that copy is not one of the normalised values and
   a zero std would blow it up to p / eps.
2. episode_stats="traj" (default) is the paper's formula: mean/std over the N
   trajectory scores of a group. episode_stats="step" is verl-agent's
   `compute_mean_std_cross_steps=True`: mean/std over all step samples of the
   group, each carrying its trajectory's score, so long trajectories weigh more.
   Both use the same scores (1.); only the statistics differ.
3. Singletons get 0: a group with one trajectory ("traj") or one sample
   ("step"), and an anchor cluster of one step.
4. Advantages come from the unpadded sample list. The reference code pads the
   batch with duplicated samples first, and the copies leak into the group
   statistics; here duplicated (trajectory, step) pairs are an error.
5. Statistics are computed in float64 on CPU (S is a few thousand); results are
   returned in the input's float dtype (float32 for ints) on its device.
6. Policy loss as verl: log-ratio clamped to [-20, 20] before exp; k3 KL with
   its log-ratio clamped to [-20, 20] and the value to [-10, 10].

Run the tests: `python -m pytest tests/test_gigpo.py -q`.
"""

import torch

# -----------------------------------------------------------------------------
# advantages


def _as(x, dtype):
    return torch.as_tensor(x).detach().cpu().to(dtype)


def _dense(keys):
    """Map hashable keys to ids 0..K-1 in order of first appearance. -> (S,) long."""
    table = {}
    return torch.tensor([table.setdefault(k, len(table)) for k in keys], dtype=torch.long)


def _normalise(x, ids, norm, eps):
    """F(x_s; {x_u : ids[u] == ids[s]}) for every sample s. x (S,) float64, ids (S,) long in [0, K)."""
    K = int(ids.max()) + 1 if len(ids) else 0
    n = torch.zeros(K, dtype=x.dtype).index_add_(0, ids, torch.ones_like(x))  # (K,) cluster sizes
    mean = torch.zeros(K, dtype=x.dtype).index_add_(0, ids, x) / n  # (K,)
    d = x - mean[ids]  # (S,)
    if norm == "mean_std":
        # unbiased variance sum (x - mean)^2 / (n - 1), as torch.std; eps is added to the std, not the variance
        var = torch.zeros(K, dtype=x.dtype).index_add_(0, ids, d * d) / (n - 1).clamp_min(1)  # (K,)
        d = d / (var.sqrt()[ids] + eps)
    return torch.where(n[ids] > 1, d, torch.zeros_like(d))  # clusters of one: no baseline, advantage 0


def discounted_returns(rewards, traj, step, gamma=0.95):
    """R_t = r_t + gamma * R_{t+1} within each trajectory, steps ordered by `step`. (S,) -> (S,).
    The rows of a trajectory must be all of its steps (a missing row is not detected: the recursion skips it)."""
    r, tr, st = _as(rewards, torch.float64).tolist(), _as(traj, torch.long).tolist(), _as(step, torch.long).tolist()
    assert len(set(zip(tr, st))) == len(st), "duplicate (traj, step) samples: compute advantages before any padding"
    out, running, prev = [0.0] * len(r), 0.0, None
    for i in sorted(range(len(r)), key=lambda i: (tr[i], -st[i])):  # each trajectory from its last step back
        running = r[i] + (gamma * running if tr[i] == prev else 0.0)
        out[i], prev = running, tr[i]
    ref = torch.as_tensor(rewards)
    return torch.tensor(out, dtype=ref.dtype if ref.is_floating_point() else torch.float32, device=ref.device)


def gigpo_advantages(rewards, valid, group, traj, step, anchors, *, gamma=0.95, invalid_penalty=0.1,
                     omega=1.0, norm="mean_std", episode_stats="traj", eps=1e-6):
    """GiGPO advantages per step sample (module docstring has the math). All inputs length S; returns dict of (S,)."""
    assert norm in ("mean", "mean_std"), f"norm must be 'mean' or 'mean_std', got {norm!r}"
    assert episode_stats in ("traj", "step"), f"episode_stats must be 'traj' or 'step', got {episode_stats!r}"
    r = _as(rewards, torch.float64)  # (S,)
    bad = 1.0 - _as(valid, torch.bool).to(torch.float64)  # (S,) 1 where the action format was invalid
    group, traj, step = _as(group, torch.long), _as(traj, torch.long), _as(step, torch.long)
    assert r.shape == bad.shape == group.shape == traj.shape == step.shape and r.dim() == 1, "inputs must be (S,)"

    # step level: discount the env reward, then subtract the penalty (it must not flow back to t-1)
    returns = discounted_returns(r, traj, step, gamma) - invalid_penalty * bad  # (S,) R'_t

    # episode level: one score per trajectory, S_i = sum_t (r_t - p * 1[t invalid])
    tids, t_of = torch.unique(traj, return_inverse=True)  # t_of (S,): dense trajectory index of each sample
    score = torch.zeros(len(tids), dtype=torch.float64).index_add_(0, t_of, r - invalid_penalty * bad)  # (N_traj,)
    t_group = torch.empty(len(tids), dtype=torch.long).scatter_(0, t_of, group)  # (N_traj,) group of each trajectory
    assert torch.equal(t_group[t_of], group), "a trajectory id appears in more than one group"
    if episode_stats == "traj":  # paper: statistics over the N trajectories of the group
        episode_adv = _normalise(score, torch.unique(t_group, return_inverse=True)[1], norm, eps)[t_of]
    else:  # verl-agent: statistics over all step samples of the group, each carrying its trajectory's score
        episode_adv = _normalise(score[t_of], torch.unique(group, return_inverse=True)[1], norm, eps)

    # anchor-state grouping: same task group and exactly equal raw observation -> same cluster
    if anchors is None:
        assert omega == 0, "anchors are needed unless omega == 0 (GRPO)"
        step_adv = torch.zeros_like(returns)
    else:
        assert len(anchors) == len(r), "one anchor per sample"
        step_adv = _normalise(returns, _dense(zip(group.tolist(), anchors)), norm, eps)

    ref = torch.as_tensor(rewards)
    like = dict(dtype=ref.dtype if ref.is_floating_point() else torch.float32, device=ref.device)
    return {"adv": (episode_adv + omega * step_adv).to(**like), "episode_adv": episode_adv.to(**like),
            "step_adv": step_adv.to(**like), "returns": returns.to(**like)}


def trajectory_weights(traj):
    """Per-sample weights that give every trajectory the same total weight: w_s = (S / n_traj) / L_traj(s),
    so the weights sum to S. Multiplied into the advantages before the token-mean loss, they stop long
    (mostly failed, step-capped) trajectories from outweighing short successes ("traj" weighting, ours; the
    papers weight every step sample alike). (S,) ids -> (S,) float32."""
    t = torch.unique(_as(traj, torch.long), return_inverse=True)[1]  # (S,) dense trajectory index
    n = torch.bincount(t).to(torch.float64)  # (n_traj,) steps per trajectory
    return (len(t) / len(n) / n[t]).to(torch.float32) if len(t) else torch.zeros(0)


# -----------------------------------------------------------------------------
# policy loss


def policy_loss(logp, old_logp, adv, mask, *, ref_logp=None, entropy=None, clip_low=0.2, clip_high=0.2,
                dual_clip=3.0, entropy_coef=0.001, kl_coef=0.01, total_tokens=None):
    """PPO clip + dual clip + entropy bonus + k3 KL to the reference, token-mean over the batch.

    logp (B, T) carries the gradient; old_logp, ref_logp (B, T) and adv (B,) or (B, T) are treated as constants;
    entropy (B, T) may carry a gradient. mask (B, T) is 1 on tokens the policy sampled. Every term is
    sum(x * mask) / total_tokens (default mask.sum()): pass the token count of the whole mini-batch as
    total_tokens and the micro-batch losses add up to its exact token mean. Metrics are token means over
    this call's own mask (n_tokens is returned to weight them).
    """
    m = mask.bool()  # (B, T)
    assert logp.shape == old_logp.shape == m.shape, f"logp {tuple(logp.shape)} / mask {tuple(m.shape)} mismatch"
    dt = torch.promote_types(logp.dtype, torch.float32)  # bf16 log-probs -> float32 math; float64 stays
    zero = logp.new_zeros((), dtype=dt)
    # Masked positions may hold 0, -inf or nan. Select them away *before* any math: the backward of where()
    # routes exactly 0 to the unselected entries, whereas x * mask would give 0 * inf = nan.
    clean = lambda x: torch.where(m, x.to(dt), zero)
    A = adv.detach().to(dt)
    A = clean(A[:, None].expand_as(m) if A.dim() == 1 else A)  # (B, T) advantage broadcast over the step's tokens
    lp, olp = clean(logp), clean(old_logp.detach())  # (B, T)
    n = m.sum()
    denom = n.clamp_min(1) if total_tokens is None else total_tokens
    tmean = lambda x: torch.where(m, x, zero).sum() / denom  # loss aggregation ("token-mean")
    lmean = lambda x: torch.where(m, x.detach().to(dt), zero).sum() / n.clamp_min(1)  # metrics

    log_ratio = (lp - olp).clamp(-20.0, 20.0)  # (B, T) log pi/pi_old
    ratio = torch.exp(log_ratio)
    pg1 = -A * ratio
    pg2 = -A * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(pg1, pg2)  # pessimistic bound: no gain from pushing ratio outside [1-cl, 1+ch]
    # dual clip (Ye et al. 2020): for A < 0 the clipped loss -A * ratio is unbounded as ratio grows; cap it
    # at -A * c, which also zeroes its gradient there
    assert dual_clip > 1.0, "the dual-clip bound c must exceed 1"
    pg3 = -A * dual_clip
    dual = (A < 0) & (pg > pg3)
    pg = torch.where(A < 0, torch.minimum(pg, pg3), pg)
    loss = pg_loss = tmean(pg)

    if entropy is not None:  # bonus: maximise the policy's entropy
        ent = clean(entropy)
        loss = loss - entropy_coef * tmean(ent)
    if ref_logp is not None:
        # low-variance KL(pi || pi_ref), k3 (Schulman 2020): with d = log pi_ref - log pi,
        # kl = e^d - d - 1 >= 0, unbiased under samples from pi; clamped to [-10, 10] as verl
        d = (clean(ref_logp.detach()) - lp).clamp(-20.0, 20.0)
        kl = (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)  # (B, T)
        loss = loss + kl_coef * tmean(kl)

    stats = torch.stack([lmean(pg), pg_loss.detach(), lmean(pg2 > pg1), lmean(dual),
                         lmean(-log_ratio), torch.where(m, ratio.detach(), zero).max(),
                         lmean(kl) if ref_logp is not None else zero, lmean(ent) if entropy is not None else zero,
                         n.to(dt)]).tolist()  # one device sync
    names = ["pg_loss", "pg_loss_agg", "clipfrac", "clipfrac_dual", "approx_kl", "ratio_max", "kl", "entropy",
             "n_tokens"]  # pg_loss_agg: the pg term as it enters the loss (divided by total_tokens)
    metrics = dict(zip(names, stats))
    return loss, metrics
