"""Tests of distill.py: SIRI phase 2 (student/teacher contexts, token gates, the KL / NLL loss, the lambda ramp).

CPU only, a few seconds; tiny models and vocabularies. Expected numbers are written out by hand (in units of ln 2).
Each test's docstring says what it proves.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import bootstrap
import model as M
import rollout as R
from distill import distill_loss, gate_weights, lambda_schedule, strip_skill, vocab_logprobs

LN2 = math.log(2.0)


def tiny_model(vocab=50, seed=3):
    cfg = M.ModelConfig.from_hf(M.config_dict(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    m = M.init_weights(M.Transformer(cfg), seed=seed, std=0.3)  # large std: peaked, varied distributions
    m.attn_backend = "sdpa"
    return m


def ragged(n, vocab=50, seed=1, lo=1, hi=9):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


# -----------------------------------------------------------------------------
# contexts and full-vocabulary log-probs


def test_student_prompt_is_teacher_prompt_minus_skill_block(tmp_path):
    """With a real Prompter and tokenizer: the student prompt recovered from a skill Step's prompt ids is the
    plain prompt exactly, and the two differ only by the skill block's ids in one contiguous place. A block
    that is absent or occurs twice raises instead of guessing."""
    texts = ["You are an expert agent operating in a house. Your task is to: put a mug in desk 1. Prior to this step "
             "A skill that may help: When to apply: Strategy: Key steps: go to desk 1 | take mug 1 <action>"] * 5
    tok = bootstrap.train_tokenizer(texts, 300, str(tmp_path))
    p = R.Prompter(tok, "a house")
    skill = R.format_skill(dict(when="a mug must go somewhere", strategy="find it first", steps="go | take | put"))
    args = ("put a mug in desk 1.", 1, [("You see a desk 1.", "go to desk 1")], "You arrive at desk 1.", ("look",))
    plain, teacher = p(*args), p(*args, skill=skill)
    step = R.Step(teacher, [5, 6], [-1.0, -1.0], 0.0, True, "a", 0, 0, 1, skill=7)
    block = tok(skill, add_special_tokens=False)["input_ids"]
    student = strip_skill(step.prompt, block)
    assert student == plain and len(teacher) == len(plain) + len(block)
    cut = next(i for i in range(len(plain)) if plain[i] != teacher[i])
    assert teacher[:cut] == plain[:cut] and teacher[cut:cut + len(block)] == block
    assert teacher[cut + len(block):] == plain[cut:]
    with pytest.raises(ValueError):
        strip_skill(plain, block)
    with pytest.raises(ValueError):
        strip_skill(teacher + block, block)


def test_vocab_logprobs_match_score_on_ragged_batch():
    """On a ragged batch split into several length buckets (one response empty): gathering the sampled token from
    the (B, R, V) log-softmax gives model.score's log-probs, each row is a distribution, padding is zero, the
    gradients through the gathered values equal score's, and temperature T gives log_softmax(logits / T)."""
    m = tiny_model()
    prompts, responses = ragged(5, seed=1), ragged(5, seed=2)
    responses[3] = []
    lp = vocab_logprobs(m, prompts, responses, bucket_tokens=12)  # (B, R, V)
    ref, _ = M.score(m, prompts, responses)  # (B, R)
    mask = torch.zeros(ref.shape, dtype=torch.bool)
    ids = torch.zeros(ref.shape, dtype=torch.long)
    for i, r in enumerate(responses):
        mask[i, :len(r)], ids[i, :len(r)] = True, torch.tensor(r, dtype=torch.long)
    got = lp.gather(-1, ids[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp[mask].exp().sum(-1), torch.ones(int(mask.sum())))
    assert (lp[~mask] == 0).all()
    g1 = torch.autograd.grad(got.sum(), list(m.parameters()))
    g2 = torch.autograd.grad(ref.sum(), list(m.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        T = 0.7
        hot = vocab_logprobs(m, prompts, responses, temperature=T)
        assert not hot.requires_grad
        # log_softmax(z / T) = log_softmax(log_softmax(z) / T): the log-partition is a per-row shift
        torch.testing.assert_close(hot[mask], F.log_softmax(lp.detach()[mask] / T, -1), atol=1e-5, rtol=0)
        ref_T, _ = M.score(m, prompts, responses, temperature=T)
        torch.testing.assert_close(hot.gather(-1, ids[..., None]).squeeze(-1) * mask, ref_T, atol=1e-5, rtol=0)


# -----------------------------------------------------------------------------
# gates


def gate_case():
    """Six samples of three tokens. Sample 0 passes every gate except that its token 1 is not an action token and
    its token 2 was not sampled (mask 0); the others each fail one gate, or clip."""
    used = [True, False, True, True, True, True]
    delta = [0.5, 0.5, 0.0, None, 0.5, float("nan")]
    adv = torch.tensor([0.5, 0.8, 0.8, 0.8, -0.3, 0.8])
    mask = torch.ones(6, 3)
    mask[0, 2] = 0
    action = torch.ones(6, 3)
    action[0, 1] = 0
    return used, delta, adv, mask, action


def test_gate_weights_by_hand_and_cap():
    """w = 1[used] 1[delta > 0] 1[action] clip(A, 0, c): only sample 0's first token survives (no skill, delta = 0,
    delta None, A < 0 and delta NaN each close the gate); per-token advantages above c are clipped to c."""
    used, delta, adv, mask, action = gate_case()
    w = gate_weights(used, delta, adv, mask, action_mask=action)
    expect = torch.zeros(6, 3)
    expect[0, 0] = 0.5
    assert torch.equal(w, expect)
    w = gate_weights([True] * 2, [1.0, 2.0], torch.tensor([[3.0, 0.4], [-1.0, 1.0]]), torch.ones(2, 2), cap=1.0)
    assert torch.equal(w, torch.tensor([[1.0, 0.4], [0.0, 1.0]]))
    w = gate_weights([True], [1.0], torch.tensor([3.0]), torch.ones(1, 2), cap=2.5)
    assert torch.equal(w, torch.tensor([[2.5, 2.5]]))


@pytest.mark.parametrize("kind", ["kl", "nll"])
def test_gated_out_tokens_get_exactly_zero_gradient(kind):
    """Tokens that fail any gate get exactly zero gradient even when their student and teacher log-probs hold
    inf/NaN, and the loss stays finite; the surviving token gets a nonzero gradient. Also through a log_softmax
    of finite logits (the student's real path): zero gradient on the logits of every gated-out token."""
    used, delta, adv, mask, action = gate_case()
    w = gate_weights(used, delta, adv, mask, action_mask=action)
    g = torch.Generator().manual_seed(0)
    s = F.log_softmax(torch.randn(6, 3, 4, generator=g), -1)
    t = F.log_softmax(torch.randn(6, 3, 4, generator=g), -1)
    s[w == 0] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])
    t[w == 0] = float("nan")
    s.requires_grad_(True)
    ids = torch.randint(0, 4, (6, 3), generator=g)
    loss, met = distill_loss(s, t, w, kind=kind, targets=ids, mask=mask)
    loss.backward()
    assert torch.isfinite(loss) and (s.grad[w == 0] == 0).all() and s.grad[0, 0].abs().sum() > 0
    assert met["n_gated"] == 1 and met["gate_frac"] == pytest.approx(1 / 17)

    z = torch.randn(6, 3, 4, generator=g, requires_grad=True)
    distill_loss(F.log_softmax(z, -1), t, w, kind=kind, targets=ids)[0].backward()
    assert (z.grad[w == 0] == 0).all() and z.grad[0, 0].abs().sum() > 0


def test_teacher_gets_no_gradient():
    """The teacher is detached inside distill_loss: a teacher log-prob tensor that requires grad receives none, and
    with a real model a teacher forward taken *with* gradients gives the same parameter gradients as one taken
    under no_grad (only the student context, skill block removed, is trained)."""
    t = F.log_softmax(torch.randn(2, 3, 5), -1).requires_grad_(True)
    s = F.log_softmax(torch.randn(2, 3, 5), -1).requires_grad_(True)
    distill_loss(s, t, torch.ones(2, 3))[0].backward()
    assert t.grad is None and s.grad is not None

    m = tiny_model()
    block, responses = [40, 41, 42], ragged(3, seed=5)
    teach = [p[:2] + block + p[2:] for p in ragged(3, seed=4, lo=3)]
    stud = [strip_skill(p, block) for p in teach]
    R_max = max(map(len, responses))
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (R_max - len(r)) for r in responses])
    w = gate_weights([True] * 3, [1.0] * 3, torch.tensor([0.5, 1.0, 2.0]), mask)
    grads = []
    for detached in (True, False):
        with torch.set_grad_enabled(not detached):
            tl = vocab_logprobs(m, teach, responses)
        loss, _ = distill_loss(vocab_logprobs(m, stud, responses), tl, w)
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    assert any(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# -----------------------------------------------------------------------------
# loss values


def hand_logp():
    """V = 3, two tokens. Teacher p_T = (1/2, 1/4, 1/4) and (1, 0, 0); student p_S = (1/4, 1/4, 1/2), (1/2, 1/4, 1/4).
    KL_1 = 1/2 ln 2 + 1/4 ln 1 + 1/4 ln(1/2) = 1/4 ln 2;  KL_2 = 1 ln(1 / (1/2)) + 0 + 0 = ln 2 (0 log 0 = 0)."""
    t = torch.tensor([[[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]]).log()  # (1, 2, 3), holds -inf
    s = torch.tensor([[[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]]]).log()
    return s, t, torch.tensor([[0.5, 1.0]])


def test_kl_by_hand():
    """Weighted full-vocabulary KL(teacher || student): (0.5 * 1/4 ln2 + 1.0 * ln2) / 1.5 = 3/4 ln 2; the mean KL over
    gated tokens is 5/8 ln 2; the gradient on the student's logits is w / sum(w) * (p_S - p_T)."""
    s, t, w = hand_logp()
    z = s.clone().requires_grad_(True)  # log-probs are valid logits of the same distribution
    loss, met = distill_loss(F.log_softmax(z, -1), t, w)
    assert loss.item() == pytest.approx(0.75 * LN2, rel=1e-6)
    assert met["kl"] == pytest.approx(0.625 * LN2, rel=1e-6)
    assert met["kl_weighted"] == pytest.approx(0.75 * LN2, rel=1e-6)
    assert met["weight_sum"] == pytest.approx(1.5) and met["n_gated"] == 2
    loss.backward()
    torch.testing.assert_close(z.grad, (w / 1.5)[..., None] * (s.exp() - t.exp()))


def test_nll_by_hand():
    """Weighted NLL of the sampled tokens (ids 1 and 0, p_S = 1/4 and 1/2) under the student:
    (0.5 * 2 ln2 + 1.0 * ln2) / 1.5 = 4/3 ln 2, from (B, R, V) log-probs with ids or from gathered (B, R) log-probs."""
    s, t, w = hand_logp()
    ids = torch.tensor([[1, 0]])
    full, _ = distill_loss(s, None, w, kind="nll", targets=ids)
    gathered, met = distill_loss(s.gather(-1, ids[..., None]).squeeze(-1), None, w, kind="nll")
    assert full.item() == pytest.approx(4 / 3 * LN2, rel=1e-6)
    assert gathered.item() == pytest.approx(4 / 3 * LN2, rel=1e-6)
    assert met["nll"] == pytest.approx(1.5 * LN2, rel=1e-6)


@pytest.mark.parametrize("kind", ["kl", "nll"])
def test_micro_batches_add_up_to_full_batch(kind):
    """With total_weight = the weight sum of the whole batch, the losses of micro-batches (and their gradients) add up
    to the full-batch loss exactly."""
    g = torch.Generator().manual_seed(1)
    s = F.log_softmax(torch.randn(6, 4, 5, generator=g), -1).requires_grad_(True)
    t = F.log_softmax(torch.randn(6, 4, 5, generator=g), -1)
    ids = torch.randint(0, 5, (6, 4), generator=g)
    w = gate_weights([True, True, False, True, True, True], [1.0, 0.2, 1.0, -1.0, 0.3, 0.1],
                     torch.randn(6, 4, generator=g) + 0.5, torch.ones(6, 4))
    full, _ = distill_loss(s, t, w, kind=kind, targets=ids)
    (g_full,) = torch.autograd.grad(full, s)
    parts = [distill_loss(s[a:b], t[a:b], w[a:b], kind=kind, targets=ids[a:b], total_weight=w.sum())[0]
             for a, b in ((0, 2), (2, 5), (5, 6))]
    (g_parts,) = torch.autograd.grad(sum(parts), s)
    torch.testing.assert_close(sum(parts), full)
    torch.testing.assert_close(g_parts, g_full)


def test_lambda_schedule():
    """Linear ramp lambda_max * min(1, (k + 1) / K): 0 before phase 2, lambda_max / K at its first iteration,
    lambda_max from iteration K - 1 on; K = 0 means no ramp."""
    assert [lambda_schedule(k, ramp=5) for k in (-1, 0, 1, 2, 3, 4, 5, 100)] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1, 1, 1])
    assert [lambda_schedule(k, lambda_max=2.0, ramp=4) for k in range(5)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])
    assert lambda_schedule(0, lambda_max=0.3, ramp=0) == 0.3
