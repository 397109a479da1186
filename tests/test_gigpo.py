"""Tests of gigpo.py: GiGPO / GRPO advantages and the PPO-style policy loss.

CPU only, well under a second. Expected numbers are written out by hand (fractions where they are exact).
Each test's docstring says what it proves.
"""

import math

import pytest
import torch

from gigpo import discounted_returns, gigpo_advantages, policy_loss, trajectory_weights

# -----------------------------------------------------------------------------
# advantages


def hand_batch():
    """The hand case. gamma 0.5, penalty 1.0 (round numbers). Group 0 has three trajectories of unequal length:
      traj 0: anchors s0 s1     rewards 0 10       (wins at step 1)              score S0 = 10
      traj 1: anchors s0 s2 s1  rewards 0 0 10     (step 1 has an invalid format) score S1 = 10 - 1 = 9
      traj 2: anchors s0 s2 s3  rewards 0 0 0      (cut off by the step cap)      score S2 = 0
    Group 1 is a single trajectory (traj 3) whose anchor s0 also occurs in group 0.
    Returns R'_t (gamma 0.5, penalty after discounting):
      traj 0: 5, 10    traj 1: 2.5, 5 - 1 = 4, 10    traj 2: 0, 0, 0    traj 3: 0.5, 1
    Rows are listed out of order on purpose."""
    rows = [  # (group, traj, step, reward, valid, anchor, expected R'_t)
        (0, 1, 2, 10.0, True, "s1", 10.0),
        (0, 0, 0, 0.0, True, "s0", 5.0),
        (1, 3, 1, 1.0, True, "s9", 1.0),
        (0, 2, 1, 0.0, True, "s2", 0.0),
        (0, 1, 0, 0.0, True, "s0", 2.5),
        (0, 2, 2, 0.0, True, "s3", 0.0),
        (0, 0, 1, 10.0, True, "s1", 10.0),
        (1, 3, 0, 0.0, True, "s0", 0.5),
        (0, 1, 1, 0.0, False, "s2", 4.0),
        (0, 2, 0, 0.0, True, "s0", 0.0),
    ]
    g, t, s, r, v, a, R = zip(*rows)
    kw = dict(rewards=torch.tensor(r), valid=torch.tensor(v), group=torch.tensor(g), traj=torch.tensor(t),
              step=torch.tensor(s), anchors=list(a))
    return kw, torch.tensor(R), torch.tensor(t)


def by_traj(traj, values):
    """Broadcast a {traj id: value} table to the rows."""
    return torch.tensor([values[int(i)] for i in traj])


def test_discounted_returns_out_of_order():
    """R_t = r_t + gamma R_{t+1} is computed per trajectory in step order, whatever the row order."""
    # traj 7: rewards 0, 0, 10 at steps 0, 1, 2; traj 3: rewards 1, 2 at steps 0, 1; rows shuffled
    traj = [7, 3, 7, 3, 7]
    step = [2, 1, 0, 0, 1]
    rew = [10.0, 2.0, 0.0, 1.0, 0.0]
    R = discounted_returns(torch.tensor(rew), torch.tensor(traj), torch.tensor(step), gamma=0.95)
    expected = [10.0, 2.0, 0.95 ** 2 * 10, 1 + 0.95 * 2, 0.95 * 10]
    torch.testing.assert_close(R, torch.tensor(expected))


def test_hand_case_mean_norm():
    """mean_norm on the hand case: A_E per trajectory ("traj") and per step sample ("step"), anchor clusters,
    singletons at 0, A = A_E + omega A_S; the two episode statistics differ when trajectory lengths differ."""
    kw, R, traj = hand_batch()
    out = gigpo_advantages(**kw, gamma=0.5, invalid_penalty=1.0, norm="mean", episode_stats="traj")
    torch.testing.assert_close(out["returns"], R)
    # traj: mean of the 3 scores (10, 9, 0) is 19/3; group 1 has one trajectory -> 0
    ae = by_traj(traj, {0: 10 - 19 / 3, 1: 9 - 19 / 3, 2: 0 - 19 / 3, 3: 0.0})
    torch.testing.assert_close(out["episode_adv"], ae)
    # clusters of group 0: s0 {5, 2.5, 0} mean 2.5; s1 {10, 10}; s2 {4, 0} mean 2; s3 singleton; group 1 singletons
    # (s0 of group 1 is not pooled with s0 of group 0)
    a_s = torch.tensor([0.0, 2.5, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 2.0, -2.5])
    torch.testing.assert_close(out["step_adv"], a_s)
    torch.testing.assert_close(out["adv"], ae + a_s)
    # step: 8 step samples of group 0 carry 10,10 | 9,9,9 | 0,0,0 -> mean 47/8 (traj mode: 19/3)
    st = gigpo_advantages(**kw, gamma=0.5, invalid_penalty=1.0, norm="mean", episode_stats="step", omega=0.5)
    ae_step = by_traj(traj, {0: 10 - 47 / 8, 1: 9 - 47 / 8, 2: -47 / 8, 3: 0.0})
    torch.testing.assert_close(st["episode_adv"], ae_step)
    torch.testing.assert_close(st["adv"], ae_step + 0.5 * a_s)
    assert not torch.allclose(st["episode_adv"], out["episode_adv"])


def test_hand_case_mean_std_norm():
    """mean_std_norm: (x - mean) / (unbiased std + 1e-6), per group of trajectories, per group of step samples,
    and per anchor cluster; a constant cluster (s1) and singletons stay 0."""
    kw, R, traj = hand_batch()
    eps = 1e-6
    out = gigpo_advantages(**kw, gamma=0.5, invalid_penalty=1.0, norm="mean_std", episode_stats="traj")
    # deviations 11/3, 8/3, -19/3; unbiased variance (121 + 64 + 361) / 9 / 2 = 91/3
    sd = math.sqrt(91 / 3) + eps
    ae = by_traj(traj, {0: 11 / 3 / sd, 1: 8 / 3 / sd, 2: -19 / 3 / sd, 3: 0.0})
    torch.testing.assert_close(out["episode_adv"], ae)
    # s0: deviations 2.5, 0, -2.5, std sqrt(12.5 / 2) = 2.5; s2: deviations 2, -2, std sqrt(8 / 1)
    s0, s2 = 2.5 / (2.5 + eps), 2 / (math.sqrt(8) + eps)
    a_s = torch.tensor([0.0, s0, 0.0, -s2, 0.0, 0.0, 0.0, 0.0, s2, -s0])
    torch.testing.assert_close(out["step_adv"], a_s)
    torch.testing.assert_close(out["adv"], ae + a_s)
    # step statistics: deviations 33/8 (x2), 25/8 (x3), -47/8 (x3) over 8 samples, unbiased: / 7
    sd = math.sqrt((2 * 33 ** 2 + 3 * 25 ** 2 + 3 * 47 ** 2) / 64 / 7) + eps
    st = gigpo_advantages(**kw, gamma=0.5, invalid_penalty=1.0, norm="mean_std", episode_stats="step")
    torch.testing.assert_close(st["episode_adv"], by_traj(traj, {0: 33 / 8 / sd, 1: 25 / 8 / sd, 2: -47 / 8 / sd, 3: 0.0}))


@pytest.mark.parametrize("norm", ["mean", "mean_std"])
@pytest.mark.parametrize("episode_stats", ["traj", "step"])
def test_identical_rewards_zero_advantage(norm, episode_stats):
    """A group whose trajectories all got the same rewards gets exactly zero advantage, in every mode,
    including shared anchors (constant clusters: no eps blow-up) and unequal lengths."""
    # 3 trajectories through the same states a, b, each winning 10 at step 1: constant clusters {9.5}, {10}
    traj = [0, 0, 1, 1, 2, 2]
    step = [0, 1, 0, 1, 0, 1]
    out = gigpo_advantages([0.0, 10.0] * 3, [True] * 6, [5] * 6, traj, step, ["a", "b"] * 3,
                           norm=norm, episode_stats=episode_stats)
    for k in ("adv", "episode_adv", "step_adv"):
        torch.testing.assert_close(out[k], torch.zeros(6), atol=1e-9, rtol=0)
    # unequal lengths, equal scores: episode advantage still 0
    out = gigpo_advantages([0.0, 10.0, 0.0, 0.0, 10.0], [True] * 5, [5] * 5, [0, 0, 1, 1, 1], [0, 1, 0, 1, 2],
                           ["a", "b", "a", "c", "b"], norm=norm, episode_stats=episode_stats, omega=0.0)
    torch.testing.assert_close(out["adv"], torch.zeros(5), atol=1e-9, rtol=0)


def test_singleton_anchors_zero_step_advantage():
    """Anchors seen once in their group get A_S = 0, so A = A_E; equal anchors in different groups do not pool."""
    out = gigpo_advantages([0.0, 10.0, 0.0, 0.0, 3.0], [True] * 5, [0, 0, 0, 0, 1], [0, 0, 1, 1, 2],
                           [0, 1, 0, 1, 0], ["a", "b", "c", "d", "a"], norm="mean")
    assert torch.equal(out["step_adv"], torch.zeros(5))
    torch.testing.assert_close(out["adv"], out["episode_adv"])
    torch.testing.assert_close(out["episode_adv"], torch.tensor([5.0, 5.0, -5.0, -5.0, 0.0]))


def test_penalty_does_not_flow_back():
    """Making step 1 invalid lowers R_1 by exactly the penalty and leaves R_0 and R_2 unchanged (the penalty is
    subtracted after discounting); in the episode score it counts once for the trajectory."""
    kw = dict(rewards=[0.0, 0.0, 10.0, 0.0, 0.0, 0.0], group=[0] * 6, traj=[0, 0, 0, 1, 1, 1],
              step=[0, 1, 2, 0, 1, 2], anchors=list("abcxyz"), norm="mean")
    ok = gigpo_advantages(valid=[True] * 6, **kw)
    bad = gigpo_advantages(valid=[True, False, True, True, True, True], **kw)
    torch.testing.assert_close(ok["returns"][:3], torch.tensor([9.025, 9.5, 10.0]))
    torch.testing.assert_close(bad["returns"] - ok["returns"], torch.tensor([0.0, -0.1, 0.0, 0.0, 0.0, 0.0]))
    # scores 10 - 0.1 and 0: mean 4.95, A_E = +-4.95 for every step of each trajectory
    torch.testing.assert_close(bad["episode_adv"], torch.tensor([4.95] * 3 + [-4.95] * 3))


def test_penalty_with_equal_scores_no_blowup():
    """Two trajectories with one invalid step each have equal scores, so A_E = 0 under mean_std; a per-step
    copy of the penalty (verl-agent) would have given +-0.1 / 1e-6 here."""
    out = gigpo_advantages([0.0, 10.0, 0.0, 10.0], [False, True, True, False], [0] * 4, [0, 0, 1, 1], [0, 1, 0, 1],
                           ["a", "b", "c", "d"], norm="mean_std", episode_stats="step")
    torch.testing.assert_close(out["adv"], torch.zeros(4), atol=1e-9, rtol=0)


def test_grpo_is_gigpo_with_omega_zero():
    """GRPO (omega 0, anchors optional) equals GiGPO's episode advantage; omega scales A_S linearly."""
    g = torch.Generator().manual_seed(0)
    S = 40
    traj = torch.randint(0, 8, (S,), generator=g)
    step = torch.zeros(S, dtype=torch.long)
    for t in traj.unique():  # steps 0..n-1 within each trajectory, rows in random order
        idx = (traj == t).nonzero().flatten()
        step[idx] = torch.arange(len(idx))
    kw = dict(rewards=torch.randint(0, 3, (S,), generator=g).float(), valid=torch.rand(S, generator=g) > 0.2,
              group=traj // 4, traj=traj, step=step)
    anchors = [f"obs{int(i)}" for i in torch.randint(0, 5, (S,), generator=g)]
    for norm in ("mean", "mean_std"):
        full = gigpo_advantages(**kw, anchors=anchors, norm=norm)
        grpo = gigpo_advantages(**kw, anchors=None, omega=0.0, norm=norm)
        torch.testing.assert_close(grpo["adv"], full["episode_adv"])
        assert full["step_adv"].abs().sum() > 0  # the comparison is not vacuous
        half = gigpo_advantages(**kw, anchors=anchors, omega=0.5, norm=norm)
        torch.testing.assert_close(half["adv"], full["episode_adv"] + 0.5 * full["step_adv"])


def test_eps_added_to_unbiased_std():
    """eps enters as (x - mean) / (std + eps) with the unbiased std: returns 0 and 2e-6 in one cluster have
    std sqrt(2) 1e-6, so A = +-1e-6 / (sqrt(2) 1e-6 + 1e-6) = +-(sqrt(2) - 1); a biased std gives +-0.5 and
    eps under the square root gives ~ +-1e-3."""
    out = gigpo_advantages(torch.tensor([0.0, 2e-6], dtype=torch.float64), [True, True], [0, 0], [0, 1], [0, 0],
                           ["a", "a"], norm="mean_std")
    expected = torch.tensor([-1.0, 1.0], dtype=torch.float64) * (math.sqrt(2) - 1)
    torch.testing.assert_close(out["step_adv"], expected)
    torch.testing.assert_close(out["episode_adv"], expected)


def test_padding_duplicates_rejected():
    """A duplicated (traj, step) sample (batch padding) is refused instead of leaking into group statistics."""
    with pytest.raises(AssertionError, match="padding"):
        gigpo_advantages([0.0, 1.0, 1.0], [True] * 3, [0] * 3, [0, 1, 1], [0, 0, 0], ["a", "b", "b"])


# -----------------------------------------------------------------------------
# policy loss


def grad_of(logp, **kw):
    """Loss and d loss / d logp for one (1, T) row with old_logp = 0 (so ratio = exp(logp))."""
    logp = logp.clone().requires_grad_(True)
    kw.setdefault("mask", torch.ones_like(logp))
    loss, metrics = policy_loss(logp, torch.zeros_like(logp), kw.pop("adv"), kw.pop("mask"), **kw)
    loss.backward()
    return loss.detach(), logp.grad, metrics


def test_masked_tokens_zero_gradient_even_with_garbage():
    """Masked positions holding -inf / nan / huge values in logp, old_logp, ref_logp, entropy and a (B, T) advantage
    give a finite loss, exactly zero gradient there, and leave the unmasked result unchanged."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    junk = torch.tensor([[0, 0, -math.inf, math.nan], [0, 1e30, math.inf, -math.inf]])
    base = torch.tensor([[-1.0, -2.0, -0.5, -0.5], [-0.3, -0.5, -0.5, -0.5]])
    old = base - 0.1
    adv = torch.tensor([[1.0, 1.0, 2.0, 2.0], [-1.0, -1.0, -1.0, -1.0]])
    dirty = lambda x: torch.where(mask.bool(), x, junk)
    results = []
    for clean in (True, False):
        f = (lambda x: x.clone()) if clean else dirty
        logp = f(base).requires_grad_(True)
        ent = f(torch.full((2, 4), 0.7)).requires_grad_(True)
        loss, _ = policy_loss(logp, f(old), f(adv), mask, ref_logp=f(old - 0.2), entropy=ent)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.equal(logp.grad[mask == 0], torch.zeros(5)) and torch.equal(ent.grad[mask == 0], torch.zeros(5))
        assert (logp.grad[mask == 1] != 0).all()
        results.append((loss.detach(), logp.grad))
    torch.testing.assert_close(results[0], results[1])


def test_ppo_clip_both_sides():
    """Inside [0.8, 1.2] the gradient is -A ratio / N; A > 0 with ratio > 1.2 and A < 0 with ratio < 0.8 give zero
    gradient (clipped direction); A > 0 with ratio < 0.8 and A < 0 with ratio > 1.2 (below 3) keep it."""
    r = torch.tensor([1.1, 1.5, 0.5, 0.5, 1.5, 0.9])
    adv = torch.tensor([[2.0, 2.0, 2.0, -2.0, -2.0, -2.0]])
    loss, grad, m = grad_of(r.log()[None], adv=adv, entropy=None, ref_logp=None)
    expected = torch.tensor([[-2 * 1.1, 0.0, -2 * 0.5, 0.0, 2 * 1.5, 2 * 0.9]]) / 6
    torch.testing.assert_close(grad, expected)
    # per-token losses: -2*1.1, -2*1.2 (clipped), -2*0.5, 2*0.8 (clipped), 2*1.5, 2*0.9
    torch.testing.assert_close(loss, torch.tensor((-2.2 - 2.4 - 1.0 + 1.6 + 3.0 + 1.8) / 6))
    assert m["clipfrac"] == pytest.approx(2 / 6) and m["ratio_max"] == pytest.approx(1.5)


def test_dual_clip_negative_advantage():
    """For A < 0 and ratio 5 > c = 3 the loss is capped at -A * 3 with zero gradient; without the dual clip it is
    -A * 5. A > 0 with the same ratio is untouched by the dual clip (ordinary clip: -A * 1.2)."""
    logp = torch.tensor([[math.log(5.0), math.log(5.0)]])
    adv = torch.tensor([[-1.0, 1.0]])
    loss, grad, m = grad_of(logp, adv=adv)
    torch.testing.assert_close(loss, torch.tensor((3.0 - 1.2) / 2))
    assert torch.equal(grad, torch.zeros(1, 2))
    assert m["clipfrac_dual"] == pytest.approx(0.5)
    loss, _, _ = grad_of(logp, adv=adv, dual_clip=100.0)
    torch.testing.assert_close(loss, torch.tensor((5.0 - 1.2) / 2))


def test_kl_k3_value_and_clamp():
    """k3 = e^d - d - 1 with d = ref - logp: d = ln 2 -> 1 - ln 2, d = -ln 2 -> ln 2 - 1/2; d = 15 -> clamped to 10
    with zero gradient; the term enters as kl_coef * token-mean."""
    logp = torch.zeros(1, 3)
    ref = torch.tensor([[math.log(2.0), -math.log(2.0), 15.0]])
    loss, grad, m = grad_of(logp, adv=torch.zeros(1), ref_logp=ref, kl_coef=0.5)  # A = 0: pg term is 0
    kl = [1 - math.log(2), math.log(2) - 0.5, 10.0]
    assert m["kl"] == pytest.approx(sum(kl) / 3)
    torch.testing.assert_close(loss, torch.tensor(0.5 * sum(kl) / 3))
    # d kl / d logp = 1 - e^d: -1 and +1/2 unclamped, 0 where clamped
    torch.testing.assert_close(grad, 0.5 / 3 * torch.tensor([[1 - 2.0, 1 - 0.5, 0.0]]))


def test_entropy_bonus_sign():
    """The entropy bonus lowers the loss by entropy_coef * token-mean(entropy): descent raises entropy."""
    ent = torch.tensor([[1.0, 3.0]], requires_grad=True)
    logp = torch.zeros(1, 2)
    loss, _ = policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), entropy=ent, entropy_coef=0.1)
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(-0.1 * 2.0))
    torch.testing.assert_close(ent.grad, torch.tensor([[-0.05, -0.05]]))


def test_total_tokens_micro_batches_sum_to_batch():
    """Two micro-batches with total_tokens = the batch's token count sum to the one-batch loss and gradient
    (all terms on); per-sample (B,) advantages equal the same values broadcast to (B, T)."""
    g = torch.Generator().manual_seed(1)
    B, T = 4, 6
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_(True)
    old = logp.detach() + 0.4 * torch.randn(B, T, generator=g)
    ref = logp.detach() + 0.4 * torch.randn(B, T, generator=g)
    ent = torch.rand(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    kw = dict(ref_logp=ref, entropy=ent)
    full, _ = policy_loss(logp, old, adv, mask, **kw)
    (g_full,) = torch.autograd.grad(full, logp)
    n = int(mask.sum())
    parts = [policy_loss(logp[s], old[s], adv[s], mask[s], ref_logp=ref[s], entropy=ent[s], total_tokens=n)[0]
             for s in (slice(0, 1), slice(1, 4))]
    (g_parts,) = torch.autograd.grad(sum(parts), logp)
    torch.testing.assert_close(sum(parts), full)
    torch.testing.assert_close(g_parts, g_full)
    # without total_tokens each part is its own mean, and the sum is wrong
    own = sum(policy_loss(logp[s], old[s], adv[s], mask[s], **{k: v[s] for k, v in kw.items()})[0]
              for s in (slice(0, 1), slice(1, 4)))
    assert not torch.allclose(own, full)
    bt, _ = policy_loss(logp, old, adv[:, None].expand(B, T), mask, **kw)
    torch.testing.assert_close(bt, full)


def test_trajectory_weights_equal_total_per_trajectory():
    # trajectory 7 has 3 steps, trajectory 2 has 1: S=4, n_traj=2 -> each trajectory's weights sum to S/2 = 2
    w = trajectory_weights(torch.tensor([7, 2, 7, 7]))
    assert torch.allclose(w, torch.tensor([2 / 3, 2.0, 2 / 3, 2 / 3]))
    assert math.isclose(float(w.sum()), 4.0, rel_tol=1e-6)
    assert trajectory_weights(torch.tensor([5, 5])).tolist() == [1.0, 1.0]  # one trajectory: token weighting
