"""train.py's SIRI: the adaptive phase schedule, paired rollouts, the skill lifecycle in the log, the bank and
buffer saved with the checkpoint and restored by --resume, and phase 2's internalization loss inside the PPO
mini-batches (exact accumulation over micro-batches, only the gated samples).

CPU, a tiny policy built by bootstrap.py. That policy never wins, never writes a parseable skill and scores 0 in
every group, so the end-to-end run patches exactly those three things (documented in `siri_run`)."""

import json
import os
import random
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import bootstrap
import envs
import gigpo
import mine
import model as M
import rollout as R
import train
import update as U

TINY = dict(demos=12, sft_steps=3, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, batch=8)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return bootstrap.build(str(tmp_path_factory.mktemp("policy")), quiet=True, **TINY)


def test_phase_schedule_is_adaptive_and_phase2_on_time():
    """Phase 1 starts at the first iteration past the minimum fraction whose buffer holds N_req wins (not at a
    fixed iteration), is never left for phase 0, and phase 2 is the final fraction of the run whatever the buffer
    did (phase 1 skipped if it never started)."""
    kw = dict(iters=150, n_req=16, min_frac=0.1, phase2_frac=0.133)
    assert train.phase2_start(150, 0.133) == 130 and train.phase2_start(40, 0.133) == 35
    assert train.phase_of(5, 0, 100, **kw) == 0       # buffer full, but before 10% of the run
    assert train.phase_of(15, 0, 15, **kw) == 0       # past 10%, buffer one short
    assert train.phase_of(15, 0, 16, **kw) == 1       # both: switch
    assert train.phase_of(60, 0, 16, **kw) == 1       # a slow buffer: later switch
    assert train.phase_of(16, 1, 0, **kw) == 1        # once in phase 1, stays (the FIFO buffer may shrink)
    assert train.phase_of(129, 1, 16, **kw) == 1
    assert train.phase_of(130, 1, 16, **kw) == 2
    assert train.phase_of(130, 0, 0, **kw) == 2       # the buffer never filled: phase 1 skipped
    assert train.phase_of(0, 0, 1, iters=6, n_req=1, min_frac=0.0, phase2_frac=0.34) == 1
    assert [train.phase_of(i, 1, 0, iters=10, n_req=1, min_frac=0, phase2_frac=0.0) for i in (8, 9)] == [1, 1]


def test_flags_backbone_group_size_defaults():
    """--algo siri is the default; --backbone grpo means omega 0 (no step advantage), also for --algo grpo, not for
    plain gigpo; N_req defaults to 2 x --groups; SIRI refuses an odd group size (the paired split needs two
    halves)."""
    a = train.get_args(["--groups", "3"])
    assert a.algo == "siri" and not train.uses_grpo(a) and a.n_req == 6
    assert train.uses_grpo(train.get_args(["--backbone", "grpo"]))
    assert train.uses_grpo(train.get_args(["--algo", "grpo"]))
    assert not train.uses_grpo(train.get_args(["--algo", "gigpo", "--backbone", "grpo"]))
    with pytest.raises(SystemExit):
        train.get_args(["--group-size", "3"])
    assert train.get_args(["--algo", "gigpo", "--group-size", "3"]).group_size == 3


def test_phase0_is_the_gigpo_loop(policy_dir, tmp_path):
    """SIRI's phase 0 is plain GiGPO: one iteration of --algo siri and of --algo gigpo from the same seed give
    identical weights and rollout metrics."""
    flags = ["--model", policy_dir, "--iters", "1", "--groups", "2", "--group-size", "2", "--max-steps", "2",
             "--max-new-tokens", "6", "--eval-tasks", "1", "--final-eval-tasks", "1", "--eval-max-steps", "1",
             "--keep-uniform-groups", "--lr", "1e-3"]
    for algo in ("siri", "gigpo"):
        train.main(flags + ["--algo", algo, "--out", str(tmp_path / algo)])
    w = [M.load(str(tmp_path / algo / "ckpt")).state_dict() for algo in ("siri", "gigpo")]
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    rows = [[json.loads(l) for l in open(tmp_path / algo / "metrics.jsonl")][1] for algo in ("siri", "gigpo")]
    assert rows[0]["phase"] == 0 and "phase" not in rows[1]
    assert all(rows[0][k] == rows[1][k] for k in ("pg_loss", "samples", "success", "valid", "trained_samples"))
    assert os.path.exists(tmp_path / "siri" / "ckpt" / "bank.json")
    assert not os.path.exists(tmp_path / "gigpo" / "bank.md")


# -----------------------------------------------------------------------------
# one SIRI run through all three phases, crashed and resumed


@pytest.fixture(scope="module")
def siri_run(policy_dir, tmp_path_factory):
    """6 iterations, 2 groups of 4 on 2 training tasks, phase 1 allowed at once (N_req 1, min fraction 0), phase 2
    the last 2 iterations; checkpoint every iteration; a crash in iteration 5, then --resume.

    Test hooks (monkeypatched, because the tiny random policy cannot produce these): every plain episode counts as
    won (the buffer's own plain-only filter still applies), the miner answers bootstrap's reference skill for the
    trajectory's task type, every skill group's delta_g is +1, and advantages are made positive (|A| + 0.5), so
    the distillation gates open. Every training rollout's episodes are recorded."""
    out = str(tmp_path_factory.mktemp("siri") / "run")
    flags = ["--model", policy_dir, "--out", out, "--algo", "siri", "--iters", "6", "--groups", "2",
             "--group-size", "4", "--train-tasks", "2", "--max-steps", "3", "--max-new-tokens", "8",
             "--eval-tasks", "1", "--final-eval-tasks", "1", "--eval-max-steps", "1", "--eval-every", "0",
             "--save-every", "1", "--phase1-min-frac", "0", "--n-req", "1", "--phase2-frac", "0.34",
             "--keep-uniform-groups", "--lr", "1e-3", "--updates", "2", "--lambda-ramp", "5", "--mine-every", "5"]
    record, crash = [], {"at": 5}
    real_succ, real_deltas, real_adv, real_rollout = (mine.successes, mine.paired_deltas,
                                                     gigpo.gigpo_advantages, R.rollout)

    def rollout(*args, **kw):
        if args[5] > 1:  # n > 1: a training rollout (evaluation plays groups of one)
            if len(record) + 1 == crash["at"]:
                crash["at"] = None
                raise RuntimeError("simulated crash")
            out = real_rollout(*args, **kw)
            record.append(out[1])
            return out
        return real_rollout(*args, **kw)

    def adv(*args, **kw):
        r = real_adv(*args, **kw)
        return dict(r, adv=r["adv"].abs() + 0.5)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mine, "successes", lambda steps, eps: real_succ(steps, [replace(e, won=True) for e in eps]))
        mp.setattr(mine, "mine", lambda model, tok, desc, trajs, **kw:
                   ([(bootstrap.reference_skill(t.task_type), t) for t in trajs], 0))
        mp.setattr(mine, "paired_deltas", lambda eps: {g: (sid, 1.0) for g, (sid, _) in real_deltas(eps).items()})
        mp.setattr(gigpo, "gigpo_advantages", adv)
        mp.setattr(R, "rollout", rollout)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train.main(flags)
        crashed = dict(bank=mine.SkillBank.load(os.path.join(out, "ckpt", "bank.json")), n_record=len(record),
                       state=json.load(open(os.path.join(out, "ckpt", "state.json"))))
        train.main(flags + ["--resume"])
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    its = [r for r in rows if not r.get("eval") and "event" not in r]
    return SimpleNamespace(out=out, rows=rows, its=its, record=record, crashed=crashed)


def test_phases_in_order_with_events(siri_run):
    """metrics.jsonl holds iterations 1-6 once each (the crash came before iteration 5 was logged) in phases
    0, 1, 1, 1, 2, 2, and a "phase" event row at each switch, the second one logged by the resumed run."""
    assert [r["iter"] for r in siri_run.its] == [1, 2, 3, 4, 5, 6]
    assert [r["phase"] for r in siri_run.its] == [0, 1, 1, 1, 2, 2]
    ev = [(r["iter"], r["from"], r["to"]) for r in siri_run.rows if r.get("event") == "phase"]
    assert ev == [(2, 0, 1), (5, 1, 2)]
    assert siri_run.crashed["state"]["iter"] == 4 and siri_run.crashed["state"]["siri"]["phase"] == 1


def test_paired_rollouts_half_with_skill_and_delta_logged(siri_run):
    """From phase 1 on, every group that retrieved a skill has exactly its second half of rollouts with that skill
    id and the first half plain; phase 0 has none. The log has the skill groups and their mean delta_g."""
    assert len(siri_run.record) == 6 and all(e.skill is None for e in siri_run.record[0])
    for eps in siri_run.record[1:]:
        for g in {e.group for e in eps}:
            ids = [e.skill for e in sorted(eps, key=lambda e: e.traj) if e.group == g]
            assert ids[:2] == [None, None] and ids[2] is not None and ids[2:] == [ids[2]] * 2
    assert siri_run.its[0]["delta_g"] is None and siri_run.its[0]["skill_groups"] == 0
    for r in siri_run.its[1:]:
        assert r["skill_groups"] == 2 and r["skill_episodes"] == 4 and r["delta_g"] == 1.0


def test_mining_lifecycle_and_buffer(siri_run):
    """Mining happens at phase 1's first iteration only (I_mine 5); the skills are logged as candidates, turn
    active after N_eval = 3 uses with delta_g +1, and the counts follow; the buffer took the plain episodes only."""
    mined = [r["skills_mined"] for r in siri_run.its]
    assert mined[0] == 0 and mined[1] >= 1 and mined[1:] == [mined[1]] * 5
    assert [r["mined"] > 0 for r in siri_run.its] == [False, True, False, False, False, False]
    ev = [r for r in siri_run.rows if r.get("event") == "skill"]
    born = {r["skill"] for r in ev if r["to"] == "candidate"}
    assert born and {r["skill"] for r in ev if r["to"] == "active"} == born
    assert all(r["iter"] == 4 for r in ev if r["to"] == "active")  # used at iterations 2, 3, 4
    assert siri_run.its[2]["candidate"] == len(born) and siri_run.its[3]["active"] == len(born)
    buf = json.load(open(os.path.join(siri_run.out, "ckpt", "buffer.json")))
    assert buf["n_added"] == sum(e.skill is None for eps in siri_run.record for e in eps) == 8 + 5 * 4


def test_bank_saved_reloaded_and_resume_keeps_it(siri_run):
    """ckpt/bank.json reloads; the resumed run (no mining after the crash) used the skills of the checkpointed
    bank, whose ids and fields the final bank still holds, with more uses; bank.md lists them."""
    before = siri_run.crashed["bank"]
    after = mine.SkillBank.load(os.path.join(siri_run.out, "ckpt", "bank.json"))
    assert set(after.skills) == set(before.skills) and before.skills
    assert all(after.skills[i].fields == s.fields and after.skills[i].uses > s.uses for i, s in before.skills.items())
    resumed = siri_run.record[siri_run.crashed["n_record"]:]
    assert len(resumed) == 2
    assert {e.skill for eps in resumed for e in eps} - {None} <= set(before.skills)
    md = open(os.path.join(siri_run.out, "bank.md")).read()
    assert md.startswith("# Skill bank") and all(f"### Skill {i}:" in md for i in after.skills)


def test_phase2_distills_only_in_phase2(siri_run):
    """Phase 2 iterations have open gates and a positive distillation loss with lambda ramping (1/5, 2/5 of
    lambda_max); phases 0-1 have neither."""
    for r in siri_run.its[:4]:
        assert r["gate_frac"] == 0 and r["distill_loss"] == 0 and r["lambda"] == 0
    for r, lam in zip(siri_run.its[4:], (0.2, 0.4)):
        assert 0 < r["gate_frac"] < 1 and r["distill_loss"] > 0 and r["lambda"] == pytest.approx(lam)


# -----------------------------------------------------------------------------
# the update: L_int inside the PPO mini-batch


@pytest.mark.parametrize("kind", ["kl", "nll"])
def test_internalization_gradient_exact_over_micro_batches(policy_dir, kind, monkeypatch):
    """train_step's phase-2 gradient = the PPO gradient + lambda x the gradient of L_int over exactly the gated
    samples (skill used, delta_g > 0, A > 0) normalised by the mini-batch's weight sum, the same whether each
    sample is its own micro-batch or all share one; gate_frac counts the gated response tokens."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(policy_dir)
    suite = envs.make("household", "train", n_tasks=2, seed=0)
    prompter = R.Prompter(tok, suite.description)
    skills = [R.format_skill(bootstrap.reference_skill(t.task_type)) for t in suite.tasks]
    blocks = {i: tok(s, add_special_tokens=False)["input_ids"] for i, s in enumerate(skills)}
    steps, _, _ = R.rollout(M.load(policy_dir), tok, prompter, suite, suite.tasks, 4, R.Sampling(max_new_tokens=6),
                            generator=torch.Generator().manual_seed(0), max_steps=2,
                            skills=[skills[i // 4] if i % 4 >= 2 else None for i in range(8)],
                            skill_ids=[i // 4 if i % 4 >= 2 else None for i in range(8)])
    adv = torch.linspace(-1.0, 2.0, len(steps))
    delta = [1.0 if s.group == 0 else -1.0 for s in steps]  # group 1's skill did not help: its gate is closed
    a = SimpleNamespace(updates=1, temperature=1.0, recompute_old_logp=False, kl_coef=0.0, lr=1.0, warmup=0,
                        amp=False, device="cpu", max_bad_steps=5, distill=kind)
    monkeypatch.setattr(U, "GRAD_CLIP", 1e9)  # no clipping: the update is the raw gradient

    def update(micro_tokens, lam):  # SGD with lr 1: before - after = the gradient
        policy = M.load(policy_dir)
        before = [p.detach().clone() for p in policy.parameters()]
        a.micro_tokens = micro_tokens
        m, _, _ = U.train_step(policy, None, torch.optim.SGD(policy.parameters(), lr=1.0), steps, adv, a,
                                   random.Random(0), delta, blocks, lam, spare=steps[0])
        return [b - p.detach() for b, p in zip(before, policy.parameters())], m

    lam = {"kl": 100.0, "nll": 0.5}[kind]  # the tiny policy barely reacts to the block: KL ~1e-5, scale it up
    one, m1 = update(1, lam)
    many, m2 = update(10 ** 6, lam)
    base, _ = update(10 ** 6, 0.0)
    for x, y in zip(one, many):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)
    gated = [k for k, s in enumerate(steps) if s.skill is not None and s.group == 0 and adv[k] > 0]
    assert gated and len(gated) < sum(s.skill is not None for s in steps)
    n_resp = sum(len(s.response) for s in steps)
    assert m1["gate_frac"] == pytest.approx(sum(len(steps[k].response) for k in gated) / n_resp)
    # KL here is ~7e-6: a difference of float32 log-probs of magnitude ~8, so batching (SDPA's summation order)
    # moves it by a few 1e-8; 1e-7 is that rounding, not slack on the normalisation (off by a factor: >= 1e-6)
    assert m1["distill_loss"] == pytest.approx(m2["distill_loss"], rel=1e-3, abs=1e-7) and m1["distill_loss"] > 0

    policy = M.load(policy_dir)  # L_int by hand on the gated samples only
    sub = [steps[k] for k in gated]
    width = max(len(s.response) for s in sub)
    w = torch.stack([adv[k].clamp(0, 1).expand(width) * (torch.arange(width) < len(steps[k].response))
                     for k in gated])  # (B, R) clip(A, 0, c) on each response token
    l_int, _ = U.internalization_loss(policy, sub, w, blocks, float(w.sum()), a)
    l_int.backward()
    assert max(float((x - y).abs().max()) for x, y in zip(many, base)) > 1e-3  # L_int moved the weights
    for x, y, p in zip(many, base, policy.parameters()):
        torch.testing.assert_close(x - y, lam * p.grad, atol=2e-6, rtol=1e-3)


def test_shop_tasks_reach_buffer_and_retrieval_as_text(policy_dir, tmp_path):
    """Shop tasks have no .text (an .instruction) and no .task_type (a .category): the buffer stores the task
    text the agent read (rollout's Episode.task_text), so it mines and saves as JSON, and retrieval gets the
    (category, instruction) the env shows."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(policy_dir)
    suite = envs.make("shop", "train", n_tasks=1, seed=0)
    steps, eps, _ = R.rollout(M.load(policy_dir), tok, R.Prompter(tok, suite.description), suite, suite.tasks, 2,
                              R.Sampling(max_new_tokens=4), generator=torch.Generator().manual_seed(0), max_steps=1)
    buf = mine.SuccessBuffer()
    assert buf.add_from_rollout(steps, [replace(e, won=True) for e in eps], 1) == 2
    task = suite.tasks[0]
    assert [(s.task, s.key) for s in buf.items] == [(task.instruction, task.category)] * 2
    buf.save(str(tmp_path / "buffer.json"))
    assert mine.SuccessBuffer.load(str(tmp_path / "buffer.json")).items == buf.items
    assert train.describe(suite, task) == (task.category, task.instruction)
