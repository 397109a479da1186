"""
train.py: the RL run. SIRI (default, SPEC 2) on a GiGPO or GRPO backbone, or plain GiGPO / GRPO, on a
built-in environment.

    python train.py                                   # SIRI on household, embedded tiny policy, CPU
    python train.py --algo gigpo                      # the baseline: SIRI's phase 0 for the whole run
    python train.py --backbone grpo --env shop --seed 1
    python train.py --model /path/to/Qwen2.5-1.5B-Instruct --device cuda --dtype bfloat16 --think

One iteration: sample G training tasks; roll out N envs per task in lockstep
(rollout.py); GiGPO advantages per step sample (gigpo.py); one epoch of PPO
updates over the samples in --updates mini-batches, each accumulated over
micro-batches so that the token mean is exact (update.py). Every --eval-every iterations
the plain-prompt policy is evaluated on held-out tasks. Everything random is
derived from (--seed, iteration), so a resumed run continues exactly.

SIRI's three phases (`phase_of`; fractions of --iters, not wall clock: a run
cut short by --max-rl-minutes may end before phase 2):
  0  warm-up: plain GiGPO, exactly the --algo gigpo loop. Won plain episodes go
     into the success buffer (mine.py). Phase 1 starts adaptively at the first
     iteration >= --phase1-min-frac x iters whose buffer holds >= --n-req wins.
  1  mining and utilization: at phase 1's first iteration and every
     --mine-every after, the current weights (no gradient; or --miner) turn
     buffered trajectories into skills for the bank. Each group retrieves at
     most one skill; the second half of its N rollouts get the skill block in
     the prompt (paired validation), and delta_g = mean score with - without
     drives the skill's lifecycle. The base loss trains on all N rollouts, each
     under the context it was sampled with (Step.prompt holds it).
  2  internalization, the last --phase2-frac x iters (the paper's 20 of 150):
     phase 1 plus lambda(k) x L_int (distill.py) on the skill samples of groups
     with delta_g > 0, token weights clip(A, 0, --adv-cap), in the same
     mini-batches and backward passes as the base loss. Phase 2 starts on time:
     if the buffer never reached N_req, phase 1 is skipped (logged).
Evaluation uses the plain prompt only: no bank, no retrieval.

Output directory (--out): metrics.jsonl (one line per iteration, per
evaluation and per event: "phase" switches, "skill" lifecycle moves), ckpt/
(the policy in HF format + optimizer + state.json, with SIRI also bank.json
and buffer.json; swapped in atomically so a crash never leaves a half-written
checkpoint), bank.md (the skill bank, readable), policy/ (the embedded
bootstrap policy when no --model is given), args.json, final.json. SIRI's
iteration lines add: phase; mined / dropped (this iteration) and skills_mined
(cumulative); active / candidate / retired; skill_groups and delta_g (mean over
the groups with a skill); gate_frac (response tokens passing the gates),
distill_loss (L_int per mini-batch, before lambda) and lambda in phase 2.

Departures from the GiGPO setup (SPEC 3) and SIRI's unpublished choices, all flags:
1. The embedded tiny policy needs a larger learning rate than 1e-6: default
   5e-5 for a bootstrap.py policy (none given, or a --model dir holding
   bootstrap.json), 1e-6 for any other checkpoint. At 2e-4 and above it drifts
   away within a few iterations (README, "Measured so far").
2. Old log-probs are the ones the sampler computed (model.generate returns the
   log-prob of every sampled token under softmax(logits / T), T the rollout
   temperature); --recompute-old-logp recomputes them with the training
   forward as verl does (worth it in bf16). As in verl, all log-probs (policy,
   old, reference) and the entropy are those of the tempered policy.
3. Phase boundaries: the paper runs ~30 / 100 / 20 of 150 iterations. Ours:
   phase 1 once the buffer holds N_req = 2 x groups wins, not before 10% of
   the run; phase 2 the final --phase2-frac 0.2, fixed (the last 2 of the
   default 10 iterations; the paper's 13.3% would leave one). Mining goes on in phase 2 too.
4. Mining: every 3 iterations, G buffered trajectories (mine.py's sampling),
   greedy. Bank: N_eval 3, thresholds 0, 3 skills per key, exploration 0.5
   (mine.py's decisions). Retrieval uses the iteration's random stream.
5. The teacher is the current weights at each micro-batch (distill.py), and
   L_int's normaliser is the gate-weight sum of the mini-batch, so micro-batch
   losses add up exactly. lambda_max 1.0, ramp 2 (distill.py says 5), c 1.0. The
   distillation forwards (B, R, V) come on top of --micro-tokens: at a 152k
   vocabulary lower --micro-tokens in phase 2.
"""

import json
import os
import random
import shutil
import time
from types import SimpleNamespace

import torch

import config
import distill as D
import envs
import gigpo
import mine
import model as M
import parallel as P
import report
import rollout as R
import update as U
from config import BASELINES, QUICK_BOOTSTRAP


def get_args(argv=None):
    return config.get_args(argv, __doc__)


# -----------------------------------------------------------------------------

def log_jsonl(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(out, policy, opt, state, write_extra=None):
    """Write ckpt.tmp fully, then swap it in: a crash leaves either the old or the new checkpoint.
    write_extra(dir), if given, writes more files (SIRI's bank and buffer) into it before the swap.
    Every rank calls it (FSDP2 gathers the full state); rank 0 writes."""
    msd, osd = P.state_dicts(policy, opt)
    if P.master():
        tmp, final, old = (os.path.join(out, d) for d in ("ckpt.tmp", "ckpt", "ckpt.old"))
        shutil.rmtree(tmp, ignore_errors=True)
        M.save(P.inner(policy), tmp, state=msd)
        torch.save(osd, os.path.join(tmp, "optimizer.pt"))
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(state, f)
        if write_extra:
            write_extra(tmp)
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    P.barrier()


# -----------------------------------------------------------------------------
# SIRI's phase schedule

def phase2_start(iters, phase2_frac):
    """First iteration (0-based) of phase 2: the last round(phase2_frac * iters) iterations."""
    return iters - round(phase2_frac * iters)


def phase_of(it, prev, n_success, iters, n_req, min_frac, phase2_frac):
    """SIRI's phase of iteration `it` (0-based), given the phase of the iteration before (0 at the start) and the
    success buffer's size now. Phase 2 comes on time whatever happened before (phase 1 skipped if it never
    started); phase 1 comes adaptively, at the first iteration >= min_frac * iters with >= n_req successes; no
    phase is ever left for an earlier one."""
    if it >= phase2_start(iters, phase2_frac):
        return 2
    if prev >= 1 or (n_success >= n_req and it >= min_frac * iters):
        return 1
    return 0


def describe(suite, task):
    """(task type, task text) as the env's observation gives them (household and shop tasks differ in fields)."""
    o = suite.new_env().reset(task)
    return o.task_type, o.task


# -----------------------------------------------------------------------------
# advantages and skill blocks for the update (update.py)

def step_advantages(steps, a):
    """GiGPO (GRPO: a.omega 0) advantages of rollout Steps under the run's flags. -> (S,) float32."""
    return gigpo.gigpo_advantages(torch.tensor([s.reward for s in steps]), torch.tensor([s.valid for s in steps]),
                                  torch.tensor([s.group for s in steps]), torch.tensor([s.traj for s in steps]),
                                  torch.tensor([s.step for s in steps]), [s.anchor for s in steps],
                                  gamma=a.gamma, invalid_penalty=a.invalid_penalty, omega=a.omega, norm=a.norm,
                                  episode_stats=a.episode_stats)["adv"]


def skill_blocks(tok, bank, ids):
    """Skill id -> its block's token ids, tokenized alone as Prompter splices them (what L_int strips)."""
    return {sid: tok(R.format_skill(bank.skills[sid].fields), add_special_tokens=False)["input_ids"] for sid in ids}


def resume_metrics(path, it):
    """--resume: keep the metrics rows up to the checkpoint's iteration (rows logged after it, and a line cut
    short by the crash, are dropped: the resumed run logs those iterations again). Atomic rewrite."""
    if not os.path.exists(path):
        return
    keep = []
    for line in open(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("iter", 0) <= it:
            keep.append(line if line.endswith("\n") else line + "\n")
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)


def merge_evals(rs):
    """One evaluation dict from the ranks' dicts (rollout.evaluate's) on disjoint task shares."""
    n = sum(r["n"] for r in rs)
    by_n = {}
    for r in rs:
        for k, c in r["by_type_n"].items():
            by_n[k] = by_n.get(k, 0) + c
    return dict(success=sum(r["success"] * r["n"] for r in rs) / n, score=sum(r["score"] * r["n"] for r in rs) / n,
                n=n, by_type={k: sum(r["by_type"].get(k, 0) * r["by_type_n"].get(k, 0) for r in rs) / c
                              for k, c in sorted(by_n.items())}, by_type_n=dict(sorted(by_n.items())))


def main(argv=None):
    a = get_args(argv)
    dev = P.init(a.device)  # this rank's device ('cuda' -> 'cuda:LOCAL_RANK')
    if a.groups % P.WORLD:
        raise SystemExit(f"--groups {a.groups} must be a multiple of the {P.WORLD} ranks (whole groups per rank)")
    if a.threads:
        torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    ckpt = os.path.join(a.out, "ckpt")
    args_path = os.path.join(a.out, "args.json")
    metrics_path = os.path.join(a.out, "metrics.jsonl")
    if P.master() and (a.resume or a.eval_only) and not os.path.exists(ckpt) and os.path.exists(ckpt + ".old"):
        os.replace(ckpt + ".old", ckpt)  # a crash between save_checkpoint's two renames: the last full checkpoint
    P.barrier()
    has_ckpt = os.path.exists(os.path.join(ckpt, "state.json"))
    if a.resume:
        if not has_ckpt:
            raise SystemExit(f"--resume: no checkpoint at {ckpt}")
        saved = json.load(open(args_path))
        diff = {k: (saved.get(k), v) for k, v in vars(a).items() if k not in ("resume", "eval_only") and saved.get(k) != v}
        if diff:
            raise SystemExit(f"--resume with different flags than the run in {a.out}: {diff}")
    elif not a.eval_only and P.master():  # an evaluation leaves the training run's args.json as it is
        with open(args_path, "w") as f:
            json.dump(vars(a), f, indent=2)
    torch.manual_seed(a.seed)
    env_kw = {"household": {"room_size": a.room_size},
              "alfworld": {"data": a.alfworld_data, "games": a.alfworld_games},
              "shop": {"data": a.webshop_data} if a.webshop_data else {}}.get(a.env, {})

    from transformers import AutoTokenizer
    init_path = a.model
    if not init_path:  # rank 0 builds the embedded policy (or finds it built), the others wait and load it
        import bootstrap
        kw = {"env": a.env, "seed": a.seed, "history": a.history, **({"room_size": a.room_size} if a.env == "household" else {}),
              **(QUICK_BOOTSTRAP if a.quick else {}), **({"demos": a.bootstrap_demos} if a.bootstrap_demos else {})}
        init_path = os.path.join(a.out, "policy")
        if P.master():
            bootstrap.build(init_path, **kw)
        P.barrier()
    dtype = getattr(torch, a.dtype)
    tok = AutoTokenizer.from_pretrained(init_path)
    resumed = a.resume or (a.eval_only and has_ckpt)
    policy = M.load(ckpt if resumed else init_path, device=dev, dtype=dtype)
    policy.grad_checkpointing = a.grad_ckpt
    policy = P.wrap(policy, a.shard)
    ref = None
    if a.kl_coef > 0 and not a.eval_only:  # the frozen initial policy; sharded like the policy under FSDP
        ref = M.load(init_path, device=dev, dtype=dtype).requires_grad_(False)
        ref = P.wrap(ref, "fsdp") if P.is_fsdp(policy) else ref
    opt = torch.optim.AdamW(policy.parameters(), lr=a.lr, weight_decay=a.weight_decay, betas=(0.9, 0.999))
    start, rl_clock, streak = 0, 0.0, 0  # rl_clock: wall clock of rollouts + updates (evaluation excluded)
    if resumed:
        state = json.load(open(os.path.join(ckpt, "state.json")))
        start, rl_clock, streak = state["iter"], state.get("rl_s", 0.0), state.get("bad_streak", 0)
    if a.resume:
        P.load_optimizer(policy, opt, os.path.join(ckpt, "optimizer.pt"))
        if P.master():
            resume_metrics(metrics_path, start)
        P.print0(f"resumed from {ckpt} at iteration {start}")

    # SIRI's state: phase, success buffer, skill bank; saved with every checkpoint, restored by --resume.
    # Every rank holds the same buffer (won episodes are gathered); the bank changes on rank 0 and is broadcast.
    siri = a.algo == "siri"
    p2 = phase2_start(a.iters, a.phase2_frac)
    buffer = mine.SuccessBuffer()
    bank = mine.SkillBank(n_eval=a.n_eval, activate=a.activate, retire=a.retire, capacity=a.bank_capacity,
                          p_explore=a.p_explore)
    sst = dict(phase=0, phase1_start=None, mined=0, dropped=0)  # phase1_start: first iteration of phase >= 1
    if a.resume and siri:
        bank = mine.SkillBank.load(os.path.join(ckpt, "bank.json"))
        buffer = mine.SuccessBuffer.load(os.path.join(ckpt, "buffer.json"))
        sst = state["siri"]
    n_events = len(bank.events)  # lifecycle events already logged
    miner, miner_tok = policy, tok  # SIRI: the current weights (mine.mine runs under torch.no_grad)
    if a.algo not in ("gigpo", "grpo") and a.miner:
        miner, miner_tok = M.load(a.miner, device=dev, dtype=dtype).eval(), AutoTokenizer.from_pretrained(a.miner)

    train = envs.make(a.env, "train", seed=a.seed, **({"n_tasks": a.train_tasks} if a.train_tasks else {}), **env_kw)
    prompter = R.Prompter(tok, train.description, history=a.history, think=a.think, max_prompt_tokens=a.max_prompt_tokens)
    eval_suites = {s: envs.make(a.env, s, n_tasks=a.final_eval_tasks, seed=a.seed, **env_kw)
                   for s in ("eval_seen", "eval_unseen")}
    sampling = R.Sampling(temperature=a.temperature, max_new_tokens=a.max_new_tokens)
    base = None  # --algo d2skill / reskill (baselines/): its skill state, in every checkpoint like SIRI's
    if a.algo in BASELINES:
        cls = BASELINES[a.algo]
        base = (cls.from_state(a, train.description, json.load(open(os.path.join(ckpt, "baseline.json"))))
                if a.resume else cls(a, train.description))
    n_base_events = len(base.events) if base else 0

    def write_skills(messages):  # baselines' reflection / creator: greedy, each rank every W-th, all ranks get all
        with P.unsharded(miner) as m, U.amp(a):
            got = P.all_gather(mine.write(m, miner_tok, P.strided(messages)))
        return [got[i % P.WORLD][i // P.WORLD] for i in range(len(messages))]

    def run_eval(it, n, with_skills=False):  # each rank plays every W-th task; rank 0 logs the merged result
        row = {"iter": it, "eval": True, "rl_s": rl_clock, **({"with_skills": True} if with_skills else {})}
        for s, suite in eval_suites.items():
            def skill_of(task):  # the best active skill of the task's key, or none (--eval-with-skills)
                sk = bank.retrieve(*describe(suite, task), None, explore=False)
                return R.format_skill(sk.fields) if sk else None
            if base:  # the baseline's own bank / skill set, per step
                skill_of = base.eval_skill_of(lambda task: describe(suite, task))
            with P.unsharded(policy) as m, U.amp(a):
                r = R.evaluate(m, tok, prompter, suite, P.strided(suite.tasks[:n]), temperature=a.eval_temperature,
                               seed=a.seed + P.RANK, max_new_tokens=a.max_new_tokens, max_steps=a.eval_max_steps,
                               skill_of=skill_of if with_skills else None, env_errors=a.env_errors)
            row[s] = merge_evals(P.all_gather(r))
        if P.master():
            log_jsonl(metrics_path, row)
        P.print0(f"eval{' with skills' if with_skills else ''} @ {it}: " + "  ".join(
            f"{s} success {row[s]['success']:.3f} score {row[s]['score']:.3f}" for s in eval_suites))
        return row

    if a.eval_only:
        row = run_eval(start, a.final_eval_tasks)
        row["policy"] = ckpt if has_ckpt else init_path
        if P.master():
            with open(os.path.join(a.out, "eval.json"), "w") as f:
                json.dump(row, f, indent=2)
        return row

    pending = []  # an iteration's event rows, written with its own row: a crash mid-iteration logs none of them

    def log_event(it, kind, **kw):  # a JSONL row with "event" and a console line
        pending.append({"event": kind, "iter": it, **kw})
        P.print0(f"[{kind} @ {it}] " + ", ".join(f"{k}: {v}" for k, v in kw.items()))

    def log_bank_events(it):
        nonlocal n_events
        for e in bank.events[n_events:]:
            log_event(it, "skill", **e)
        n_events = len(bank.events)

    def save_siri(d):  # into the checkpoint being written, before its atomic swap
        bank.save(os.path.join(d, "bank.json"))
        buffer.save(os.path.join(d, "buffer.json"))

    def save_base(d):
        with open(os.path.join(d, "baseline.json"), "w") as f:
            json.dump(base.state(), f)

    def write_bank_md():  # atomic, like every file a crash could otherwise leave half-written
        if P.master():
            with open(os.path.join(a.out, "bank.md.tmp"), "w") as f:
                f.write((base or bank).markdown())
            os.replace(os.path.join(a.out, "bank.md.tmp"), os.path.join(a.out, "bank.md"))

    if start == 0:
        run_eval(0, a.eval_tasks)
    done_iters = start
    for it in range(start, a.iters):
        t0 = time.time()
        rng = random.Random(a.seed * 1_000_003 + it)  # the same stream on every rank (tasks, mining, retrieval)
        tasks = rng.sample(train.tasks, a.groups)
        gen = torch.Generator(device=dev).manual_seed(a.seed * 1_000_003 + it + 1_000_000_007 * P.RANK)
        policy.eval()

        # SIRI: phase, mining, retrieval (phase 0 and --algo gigpo/grpo: none of it, the plain loop)
        phase = (phase_of(it, sst["phase"], len(buffer), a.iters, a.n_req, a.phase1_min_frac, a.phase2_frac)
                 if siri else 0)
        if phase != sst["phase"]:
            why = {1: f"success buffer {len(buffer)} >= n_req {a.n_req}",
                   2: f"the last {a.iters - p2} iterations"}[phase]
            if sst["phase"] == 0 and phase == 2:
                why += f"; phase 1 skipped: success buffer {len(buffer)} < n_req {a.n_req}"
            log_event(it + 1, "phase", **{"from": sst["phase"], "to": phase, "reason": why})
            sst["phase"] = phase
            if sst["phase1_start"] is None:
                sst["phase1_start"] = it
        mined = dropped = 0
        if phase >= 1 and (it - sst["phase1_start"]) % a.mine_every == 0:
            trajs = buffer.sample(a.mine_count, rng)  # each rank mines every W-th one
            with P.unsharded(miner) as m, U.amp(a):
                got = P.all_gather(mine.mine(m, miner_tok, train.description, P.strided(trajs)))
            kept, dropped = [x for k, _ in got for x in k], sum(d for _, d in got)
            added = [bank.add(skill, t.key, it + 1, t) for skill, t in kept] if P.master() else []
            bank = P.broadcast(bank)
            mined, sst["mined"], sst["dropped"] = len(kept), sst["mined"] + len(kept), sst["dropped"] + dropped
            P.print0(f"mining @ {it + 1}: {len(trajs)} trajectories -> {mined} skills parsed "
                     f"({sum(x is not None for x in added)} new in the bank), {dropped} dropped")
            log_bank_events(it + 1)
        skills = skill_ids = None
        if phase >= 1:  # paired validation: per group at most one skill, in the second half of its rollouts
            skills, skill_ids = [], []
            for task in tasks:
                s = bank.retrieve(*describe(train, task), rng)
                for use in mine.paired_split(a.group_size):
                    skills.append(R.format_skill(s.fields) if s and use else None)
                    skill_ids.append(s.id if s and use else None)
            skills, skill_ids = P.my_slice(skills), P.my_slice(skill_ids)
        t_skill = time.time()
        if base:  # the baseline's per-env skills: per-step callables (rollout.py), one tag per episode
            skills, skill_ids = base.assign(it + 1, tasks, a.group_size, rng, lambda task: describe(train, task))
            skills, skill_ids = P.my_slice(skills), P.my_slice(skill_ids)
        t_skill = time.time() - t_skill  # + the bookkeeping after the rollout: a baseline's own overhead

        with P.unsharded(policy) as m, U.amp(a):  # this rank's G / W groups, all N rollouts of each
            steps, eps, st = R.rollout(m, tok, prompter, train, P.my_slice(tasks), a.group_size, sampling,
                                       generator=gen, skills=skills, skill_ids=skill_ids, max_steps=a.max_steps,
                                       env_errors=a.env_errors, group_base=P.RANK * (a.groups // P.WORLD),
                                       traj_base=P.RANK * (a.groups // P.WORLD) * a.group_size)
        t_roll = time.time() - t0
        if not steps:  # (only --env-errors fail with every env of this rank failing at reset)
            raise RuntimeError(f"iteration {it + 1}: every environment on rank {P.RANK} failed at reset")
        if base:
            base.bonus(steps, eps)  # D2Skill: + lambda * c_i on skill-half returns (rank-local groups), in place
        adv = step_advantages(steps, a)
        by_group = {}
        for e in eps:
            by_group.setdefault(e.group, set()).add(round(e.score, 6))
        mixed = {gid for gid, v in by_group.items() if len(v) > 1}
        keep = [k for k, s in enumerate(steps) if a.keep_uniform_groups or s.group in mixed]
        if a.weighting == "traj" and keep:
            adv[keep] = adv[keep] * gigpo.trajectory_weights([steps[k].traj for k in keep])

        # SIRI: delta_g -> skill lifecycle (rank 0, broadcast); plain wins -> every rank's buffer; what L_int needs
        deltas = mine.paired_deltas(eps) if phase >= 1 else {}  # {group: (skill id, delta_g)}, this rank's groups
        all_deltas = [x for r in P.all_gather(list(deltas.values())) for x in r] if phase >= 1 else []
        if all_deltas:
            if P.master():
                for sid, d in all_deltas:
                    bank.update(sid, d, it + 1)
            bank = P.broadcast(bank)
        log_bank_events(it + 1)
        if siri:
            for wins in P.all_gather(mine.successes(steps, eps)):
                for w in wins:
                    buffer.add(*w, it + 1)
        base_m, t1 = {}, time.time()
        if base:  # every rank: the same gathered episodes and steps, so the skill state stays the same everywhere
            all_eps = [e for r in P.all_gather(eps) for e in r]
            lite = [x for r in P.all_gather([SimpleNamespace(traj=s.traj, step=s.step, action=s.action, anchor=s.anchor,
                                                             skill=s.skill) for s in steps]) for x in r]
            base_m = base.update(it + 1, all_eps, lite, write_skills)  # bookkeeping, then skills written by the miner
            for e in base.events[n_base_events:]:
                log_event(it + 1, "skill", **e)
            n_base_events = len(base.events)
            base_m["skill_s"] = t_skill + time.time() - t1
        lam = D.lambda_schedule(it - p2, a.lambda_max, a.lambda_ramp) if phase == 2 else 0.0
        blocks = skill_blocks(tok, bank, [sid for sid, _ in deltas.values()])
        delta = [deltas.get(steps[k].group, (None, None))[1] for k in keep]

        policy.train()
        t1 = time.time()
        m, n_bwd, streak = U.train_step(policy, ref, opt, [steps[k] for k in keep], adv[keep], a, rng, delta, blocks,
                                      lam, spare=steps[0], streak=streak)
        t_train = time.time() - t1
        n_tok = sum(len(steps[k].prompt) + len(steps[k].response) for k in keep)
        # sums over ranks, then the row's means; wall-clock times: the slowest rank
        (E, won, score, reward, S, valid, ep_len, trained, n_mixed, n_groups, gen_tok, n_tok, env_err, sk_eps) = \
            P.all_sum([len(eps), sum(e.won for e in eps), sum(e.score for e in eps), sum(s.reward for s in steps),
                       len(steps), sum(s.valid for s in steps), sum(e.steps for e in eps), len(keep), len(mixed),
                       len(by_group), st["gen_tokens"], n_tok, st.get("env_errors", 0),
                       sum(e.skill is not None for e in eps)])
        t_roll, gen_s, env_s, t_train, iter_s = P.all_max([t_roll, st["gen_s"], st["env_s"], t_train, time.time() - t0])
        row = dict(iter=it + 1, success=won / E, score=score / E, reward=reward / E, valid=valid / S, ep_len=ep_len / E,
                   samples=int(S), trained_samples=int(trained), mixed_groups=n_mixed / n_groups, env_errors=int(env_err),
                   rollout_s=t_roll, gen_s=gen_s, env_s=env_s, train_s=t_train, train_tok_s=n_tok / max(t_train, 1e-9),
                   gen_tok_s=gen_tok / max(gen_s, 1e-9), iter_s=iter_s, **m)
        if P.WORLD > 1:  # per rank: the load split, and the invariants that keep DDP / FSDP from hanging or drifting
            ranks = P.all_gather(dict(samples=len(steps), episodes=len(eps), backward=n_bwd,
                                      **({} if P.is_fsdp(policy) else {"param_sum": P.param_checksum(policy)})))
            row["ranks"] = {k: [r[k] for r in ranks] for k in ranks[0]}
            assert len(set(row["ranks"]["backward"])) == 1, f"ranks made different backward passes: {row['ranks']}"
            assert len(set(row["ranks"].get("param_sum", [0]))) == 1, f"parameters differ across ranks: {row['ranks']}"
        rl_clock, done_iters = rl_clock + row["iter_s"], it + 1
        row["rl_s"] = rl_clock
        siri_line = ""
        if siri:
            dg = [d for _, d in all_deltas]
            row.update(phase=phase, mined=mined, dropped=dropped, skills_mined=sst["mined"], **bank.counts(),
                       buffer=len(buffer), skill_groups=len(all_deltas), skill_episodes=int(sk_eps),
                       delta_g=sum(dg) / len(dg) if dg else None, gate_frac=m.get("gate_frac", 0.0),
                       distill_loss=m.get("distill_loss", 0.0), **{"lambda": lam})
            siri_line = (f" | phase {phase} skills {sst['mined']} "
                         f"(a {row['active']} c {row['candidate']} r {row['retired']})"
                         f" dg {'-' if not dg else format(row['delta_g'], '+.2f')} gate {row['gate_frac']:.3f}"
                         f" distill {row['distill_loss']:.3g}")
        if base:
            row.update({**base_m, **base.counts()})
            siri_line = " | " + " ".join(f"{k} {v}" for k, v in base.counts().items())
        if P.master():
            for r in pending + [row]:
                log_jsonl(metrics_path, r)
        pending.clear()
        P.print0(f"it {it + 1:4d} | success {row['success']:.3f} | reward {row['reward']:.2f} | valid {row['valid']:.3f} | "
                 f"len {row['ep_len']:.1f} | mixed {row['mixed_groups']:.2f} | kl {m.get('kl', 0):.4f}{siri_line} | "
                 f"gen {gen_s:.1f}s env {env_s:.1f}s train {t_train:.1f}s ({row['train_tok_s']:.0f} tok/s) | "
                 f"{iter_s:.1f}s (RL {rl_clock / 60:.1f} min)" + (f" | SKIPPED {m['skipped_updates']} non-finite "
                                                               f"updates" if m["skipped_updates"] else ""))
        if a.eval_every and (it + 1) % a.eval_every == 0 and it + 1 < a.iters:
            run_eval(it + 1, a.eval_tasks)
        out_of_time = a.max_rl_minutes and rl_clock >= 60 * a.max_rl_minutes
        if (it + 1) % a.save_every == 0 or it + 1 == a.iters or out_of_time:
            save_checkpoint(a.out, policy, opt, {"iter": it + 1, "rl_s": rl_clock, "bad_streak": streak,
                                                 **({"siri": sst} if siri else {})},
                            save_siri if siri else save_base if base else None)
            if siri or base:
                write_bank_md()
        if out_of_time:
            P.print0(f"stopping after {it + 1} iterations: --max-rl-minutes {a.max_rl_minutes} reached")
            break
    final = run_eval(done_iters, a.final_eval_tasks)
    if (siri or base) and a.eval_with_skills:
        final["with_skills"] = run_eval(done_iters, a.final_eval_tasks, with_skills=True)
    if not P.master():
        return final
    with open(os.path.join(a.out, "final.json"), "w") as f:
        json.dump(final, f, indent=2)
    line = "  ".join(f"{s} success {final[s]['success']:.3f} score {final[s]['score']:.3f}" for s in eval_suites)
    if siri:
        write_bank_md()
        c = bank.counts()
        line += (f" | ended in phase {sst['phase']}, {sst['mined']} skills mined ({sst['dropped']} dropped): "
                 f"{c['active']} active, {c['candidate']} candidate, {c['retired']} retired -> {a.out}/bank.md")
    if base:
        write_bank_md()
        line += " | " + ", ".join(f"{k} {v}" for k, v in base.counts().items()) + f" -> {a.out}/bank.md"
    print(f"results: {a.algo}{'' if a.algo in ('gigpo', 'grpo') else '/' + a.backbone} on {a.env}, {done_iters} iterations, "
          f"{rl_clock / 60:.1f} RL min, plain prompt: {line}", flush=True)
    rows = report.read_metrics(metrics_path)
    report.learning_curve(rows, os.path.join(a.out, "curve.png"), f"{a.algo} on {a.env}, seed {a.seed}")
    print(report.run_table(rows) + f"\n(learning curve: {a.out}/curve.png)", flush=True)
    return final


if __name__ == "__main__":
    main()
    P.exit()  # (torchrun: leave the process group together)
