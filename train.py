"""
train.py: the RL run. SIRI (default) on a GiGPO or GRPO backbone, plain GiGPO / GRPO, or the baselines D2Skill /
ReSkill (baselines/), on a built-in environment. The algorithm, its equations and every default are in
docs/algorithm.md; this docstring is the contract of the loop.

    python train.py                                   # SIRI on household, embedded tiny policy, CPU
    python train.py --quick                           # every phase in minutes, a smoke test
    python train.py --algo gigpo                      # the baseline: SIRI's phase 0 for the whole run
    python train.py --backbone grpo --env shop --seed 1
    python train.py --model /path/to/Qwen2.5-1.5B-Instruct --device cuda --dtype bfloat16 --think
    python train.py --model /path/to/Qwen2.5-7B-Instruct --device cuda --dtype bfloat16 --grad-ckpt --lora-rank 64
    torchrun --nproc_per_node=8 train.py --model /path/to/Qwen2.5-7B-Instruct --device cuda --dtype bfloat16

One iteration (`iteration`), the same named steps for every --algo; what SIRI adds are the hooks of one object,
`Siri`, which owns its phase, success buffer and skill bank (D2Skill / ReSkill plug into the same hooks through
`Baseline`, plain GiGPO / GRPO is `Skills`, whose hooks do nothing):
  1. sample G training tasks from the (--seed, iteration) stream;
  2. this iteration's skills (`Siri.skills`): the phase, a mining round when due, retrieval for paired validation;
  3. roll out N envs per task in lockstep (rollout.py), each rank its G / W groups (parallel.py);
  4. GiGPO advantages per step sample (`advantages`, gigpo.py; docs/algorithm.md, "GiGPO");
  5. skill feedback (`Siri.feedback`): delta_g per group -> the skill lifecycle, won plain episodes -> the buffer;
  6. one epoch of PPO in --updates mini-batches, + lambda x L_int in phase 2 (`Siri.internalization`, update.py);
  7. log (metrics.jsonl), evaluate every --eval-every iterations, checkpoint every --save-every.
Everything random is derived from (--seed, iteration), so a resumed run continues exactly. Evaluation uses the
plain prompt only: no bank, no retrieval (--eval-with-skills adds one evaluation with them at the end).

SIRI's three phases (`phase_of`; fractions of --iters, not wall clock: a run cut short by --max-rl-minutes may
end before phase 2; docs/algorithm.md, "Phases"):
  0  warm-up: plain GiGPO, exactly the --algo gigpo loop. Won plain episodes go into the success buffer
     (mine.py). Phase 1 starts adaptively at the first iteration >= --phase1-min-frac x iters whose buffer
     holds >= --n-req wins.
  1  mining and utilization: at phase 1's first iteration and every --mine-every after, the current weights (no
     gradient; or --miner) turn buffered trajectories into skills for the bank ("Mining"). Each group retrieves
     at most one skill; the second half of its N rollouts get the skill block in the prompt (paired
     validation), and delta_g = mean score with - without drives the skill's lifecycle ("Validation and
     lifecycle"). The base loss trains on all N rollouts, each under the context it was sampled with.
  2  internalization, the last --phase2-frac x iters: phase 1 plus lambda(k) x L_int (distill.py) on the skill
     samples of groups with delta_g > 0, token weights clip(A, 0, c), in the same mini-batches and backward
     passes as the base loss ("Internalization"). Phase 2 starts on time: if the buffer never reached N_req,
     phase 1 is skipped (logged). --phase2-frac 1.0 gives phase 2 from the first iteration, --lambda-max 0 the
     control without L_int, --bank a starting bank (e.g. reference skills, already active).

Output directory (--out): metrics.jsonl (one line per iteration, per evaluation and per event: "phase"
switches, "skill" lifecycle moves), ckpt/ (the policy in HF format + optimizer + state.json, with SIRI also
bank.json and buffer.json, a baseline its baseline.json; swapped in atomically so a crash never leaves a
half-written checkpoint), bank.md (the skill bank, readable), policy/ (the embedded bootstrap policy when no
--model is given), args.json, final.json, curve.png (when matplotlib is installed). SIRI's iteration lines add:
phase; mined / dropped (this iteration) and skills_mined (cumulative); active / candidate / retired;
skill_groups and delta_g (mean over the groups with a skill); gate_frac (response tokens passing the gates),
distill_loss (L_int per mini-batch, before lambda) and lambda in phase 2.

Departures from the GiGPO setup and SIRI's unpublished choices (docs/algorithm.md, "Departures"):
1. The embedded tiny policy needs a larger learning rate than 1e-6: default 5e-5 for a bootstrap.py policy
   (none given, or a --model dir holding bootstrap.json), 1e-6 for any other checkpoint. At 2e-4 and above it
   drifts away within a few iterations (docs/experiments.md).
2. Old log-probs are the ones the sampler computed (model.generate returns the log-prob of every sampled token
   under softmax(logits / T), T the rollout temperature); --recompute-old-logp recomputes them with the
   training forward as verl does (worth it in bf16). As in verl, all log-probs (policy, old, reference) and the
   entropy are those of the tempered policy.
3. Phase boundaries: the paper runs ~30 / 100 / 20 of 150 iterations. Ours: phase 1 once the buffer holds
   N_req = 2 x groups wins, not before 10% of the run; phase 2 the final --phase2-frac 0.2, fixed (the last 2
   of the default 10 iterations; the paper's 13.3% would leave one). Mining goes on in phase 2 too.
4. Mining: every 3 iterations, G buffered trajectories (mine.py's sampling), greedy. Bank:
   mine.SkillBank's defaults (N_eval 3, thresholds 0, 3 skills per key, exploration 0.5). Retrieval uses the
   iteration's random stream.
5. The teacher is the current weights at each micro-batch (distill.py), and L_int's normaliser is the
   gate-weight sum of the mini-batch, so micro-batch losses add up exactly. lambda_max 1.0, ramp 2,
   c = update.ADV_CAP 1.0. The distillation forwards (B, R, V) come on top of --micro-tokens: at a 152k
   vocabulary lower --micro-tokens in phase 2.
6. Groups whose rollouts all scored the same are left out of the update (DAPO's dynamic sampling;
   --keep-uniform-groups keeps them). GiGPO's normalisation is NORM = mean_std in every env (the paper uses
   mean for WebShop).
"""

import dataclasses
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
import rollout as R
import update as U
from config import BASELINES

# GiGPO's advantage (gigpo.gigpo_advantages; docs/algorithm.md, "GiGPO"): the paper's values, not flags
OMEGA = 1.0               # weight of the step (anchor-state) advantage; GRPO: 0
NORM = "mean_std"         # "mean_std" (paper, ALFWorld) or "mean" (paper, WebShop)
EPISODE_STATS = "traj"    # episode statistics over the N trajectories (paper) or "step" (verl-agent's code)
INVALID_PENALTY = 0.1     # subtracted per step with an invalid action format
EVAL_TEMPERATURE = 0.4    # held-out evaluation's sampling temperature (GiGPO's)


def get_args(argv=None):
    return config.get_args(argv, __doc__)


def uses_grpo(a):
    """GRPO: --algo grpo, or a skill method on --backbone grpo (omega 0: no step advantage)."""
    return a.algo == "grpo" or (a.algo not in ("gigpo", "grpo") and a.backbone == "grpo")


def describe(suite, task):
    """(skill key, task text): the key SIRI files and retrieves the task's skills under (envs.skill_key: the task
    type unless the env keys finer) and the task as the agent reads it (the observation's)."""
    o = suite.new_env().reset(task)
    return envs.skill_key(task) or o.task_type, o.task


def task_type(suite, task):
    """A task's type (--train-types; evaluation reports by it), read off the task (envs/__init__.py's contract)."""
    return getattr(task, "task_type", None) or suite.new_env().reset(task).task_type


# -----------------------------------------------------------------------------
# SIRI's phase schedule (docs/algorithm.md, "Phases")

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


# -----------------------------------------------------------------------------
# the math steps of an iteration

def step_advantages(steps, a):
    """GiGPO (GRPO: omega 0) advantages A = A_E + omega A_S of rollout Steps (gigpo.gigpo_advantages). -> (S,)."""
    return gigpo.gigpo_advantages(torch.tensor([s.reward for s in steps]), torch.tensor([s.valid for s in steps]),
                                  torch.tensor([s.group for s in steps]), torch.tensor([s.traj for s in steps]),
                                  torch.tensor([s.step for s in steps]), [s.anchor for s in steps],
                                  gamma=a.gamma, invalid_penalty=INVALID_PENALTY, omega=0.0 if uses_grpo(a) else OMEGA,
                                  norm=NORM, episode_stats=EPISODE_STATS)["adv"]


def advantages(steps, eps, a):
    """Step 4: advantages, and the samples the update trains on (groups whose episodes scored differently, or
    all with --keep-uniform-groups). -> (adv (S,), kept sample indices, (mixed groups, groups))."""
    adv = step_advantages(steps, a)
    by_group = {}
    for e in eps:
        by_group.setdefault(e.group, set()).add(round(e.score, 6))
    mixed = {gid for gid, v in by_group.items() if len(v) > 1}
    keep = [k for k, s in enumerate(steps) if a.keep_uniform_groups or s.group in mixed]
    if a.weighting == "traj" and keep:
        adv[keep] = adv[keep] * gigpo.trajectory_weights([steps[k].traj for k in keep])
    return adv, keep, (len(mixed), len(by_group))


def skill_blocks(tok, bank, ids):
    """Skill id -> its block's token ids, tokenized alone as Prompter splices them (what L_int strips)."""
    return {sid: tok(R.format_skill(bank.skills[sid].fields), add_special_tokens=False)["input_ids"] for sid in ids}


# -----------------------------------------------------------------------------
# skill methods: the hooks of an iteration. Skills: plain GiGPO / GRPO (no skills, every hook does nothing).

class Skills:
    """--algo gigpo / grpo: the hooks of an iteration, all empty. Siri and Baseline fill them in."""

    def __init__(self, a, log):
        self.a, self.log = a, log

    def skills(self, it, tasks, rng):  # step 2 -> (G x N skill texts, skill ids), or (None, None): plain prompts
        return None, None

    def shape_rewards(self, steps, eps):  # before the advantages, in place
        pass

    def feedback(self, it, steps, eps):  # step 5
        pass

    def internalization(self, it, tok):  # step 6 -> ({group: delta_g}, {skill id: block ids}, lambda)
        return {}, {}, 0.0

    def row(self, skill_episodes, m):  # step 7 -> (metrics row fields, console line suffix)
        return {}, ""

    def state(self):  # into ckpt/state.json
        return {}

    def save(self, d):  # files into the checkpoint dir being written
        pass

    def eval_skill_of(self, suite):  # --eval-with-skills: task -> skill block, or None for no such evaluation
        return None

    def markdown(self):  # bank.md, or None
        return None

    def summary(self):  # the end of the results line
        return ""


class Siri(Skills):
    """SIRI's state and decisions: the phase, the success buffer and the skill bank, checkpointed together
    (docs/algorithm.md, "Phases", "Mining", "Validation and lifecycle", "Internalization"). Every rank holds
    the same buffer (won episodes are gathered) and the same bank (changed on rank 0 and broadcast), so every
    rank takes the same decisions."""

    def __init__(self, a, log, suite, miner, bank=None):
        super().__init__(a, log)
        self.suite, self.miner = suite, miner  # miner: (model, tokenizer), by default the policy itself
        self.buffer, self.bank = mine.SuccessBuffer(), bank if bank is not None else mine.SkillBank()
        self.phase, self.phase1_start, self.mined, self.dropped = 0, None, 0, 0  # mined / dropped: cumulative
        self.p2 = phase2_start(a.iters, a.phase2_frac)
        self.n_events = len(self.bank.events)  # lifecycle events already logged (or from --bank's run)
        self.it_mined = self.it_dropped = 0
        self.deltas, self.all_deltas, self.lam = {}, [], 0.0

    def state(self):
        return {"siri": dict(phase=self.phase, phase1_start=self.phase1_start, mined=self.mined, dropped=self.dropped)}

    def save(self, d):
        self.bank.save(os.path.join(d, "bank.json"))
        self.buffer.save(os.path.join(d, "buffer.json"))

    def load(self, d, state):
        """--resume: the bank, buffer and phase of the checkpoint in dir d (state: its state.json)."""
        self.bank = mine.SkillBank.load(os.path.join(d, "bank.json"))
        self.buffer = mine.SuccessBuffer.load(os.path.join(d, "buffer.json"))
        s = state["siri"]
        self.phase, self.phase1_start, self.mined, self.dropped = s["phase"], s["phase1_start"], s["mined"], s["dropped"]
        self.n_events = len(self.bank.events)

    def log_bank_events(self, it):
        for e in self.bank.events[self.n_events:]:
            self.log.event(it, "skill", **e)
        self.n_events = len(self.bank.events)

    def skills(self, it, tasks, rng):
        """Step 2: the phase, mining when due, then paired validation: per group at most one retrieved skill,
        in the second half of its rollouts (mine.paired_split)."""
        self.advance(it)
        self.it_mined = self.it_dropped = 0
        if self.phase >= 1 and (it - self.phase1_start) % self.a.mine_every == 0:
            self.mine_round(it, rng)
        if self.phase == 0:
            return None, None
        skills, ids = [], []
        for task in tasks:
            s = self.bank.retrieve(*describe(self.suite, task), rng)
            for use in mine.paired_split(self.a.group_size):
                skills.append(R.format_skill(s.fields) if s and use else None)
                ids.append(s.id if s and use else None)
        return skills, ids

    def advance(self, it):
        """The phase of iteration `it` (phase_of), with a "phase" event at a switch."""
        a = self.a
        phase = phase_of(it, self.phase, len(self.buffer), a.iters, a.n_req, a.phase1_min_frac, a.phase2_frac)
        if phase == self.phase:
            return
        why = {1: f"success buffer {len(self.buffer)} >= n_req {a.n_req}", 2: f"the last {a.iters - self.p2} iterations"}
        n = len(self.buffer)
        skipped = f"success buffer {n} < n_req {a.n_req}" if n < a.n_req else "phase 2 is due first"
        why = why[phase] + (f"; phase 1 skipped: {skipped}" if self.phase == 0 and phase == 2 else "")
        self.log.event(it + 1, "phase", **{"from": self.phase, "to": phase, "reason": why})
        self.phase = phase
        if self.phase1_start is None:
            self.phase1_start = it

    def mine_round(self, it, rng):
        """A mining round: G buffered trajectories -> skills (mine.mine, greedy, no gradient), each rank every
        W-th trajectory; new skills enter the bank as candidates (rank 0, broadcast)."""
        trajs = self.buffer.sample(self.a.groups, rng)
        model, tok = self.miner
        with P.unsharded(model) as m, U.amp(self.a):
            got = P.all_gather(mine.mine(m, tok, self.suite.description, P.strided(trajs)))
        kept, self.it_dropped = [x for k, _ in got for x in k], sum(d for _, d in got)
        added = [self.bank.add(skill, t.key, it + 1, t) for skill, t in kept] if P.master() else []
        self.bank = P.broadcast(self.bank)
        self.it_mined, self.mined, self.dropped = len(kept), self.mined + len(kept), self.dropped + self.it_dropped
        P.print0(f"mining @ {it + 1}: {len(trajs)} trajectories -> {len(kept)} skills parsed "
                 f"({sum(x is not None for x in added)} new in the bank), {self.it_dropped} dropped")
        self.log_bank_events(it + 1)

    def feedback(self, it, steps, eps):
        """Step 5: delta_g of every skill group (mine.paired_deltas) -> the skill lifecycle (rank 0, broadcast);
        won plain episodes of every rank -> the buffer."""
        self.deltas = mine.paired_deltas(eps) if self.phase >= 1 else {}  # {group: (skill id, delta_g)}, this rank
        self.all_deltas = P.all_gather_flat(list(self.deltas.values())) if self.phase >= 1 else []
        if self.all_deltas:
            if P.master():
                for sid, d in self.all_deltas:
                    self.bank.update(sid, d, it + 1)
            self.bank = P.broadcast(self.bank)
        self.log_bank_events(it + 1)
        for w in P.all_gather_flat(mine.successes(steps, eps)):
            self.buffer.add(*w, it + 1)

    def internalization(self, it, tok):
        """Step 6's inputs: delta_g per group and the skill blocks L_int strips; lambda(k) in phase 2, else 0."""
        self.lam = D.lambda_schedule(it - self.p2, self.a.lambda_max, self.a.lambda_ramp) if self.phase == 2 else 0.0
        blocks = skill_blocks(tok, self.bank, [sid for sid, _ in self.deltas.values()])
        return {g: d for g, (_, d) in self.deltas.items()}, blocks, self.lam

    def row(self, skill_episodes, m):
        dg = [d for _, d in self.all_deltas]
        row = dict(phase=self.phase, mined=self.it_mined, dropped=self.it_dropped, skills_mined=self.mined,
                   **self.bank.counts(), buffer=len(self.buffer), skill_groups=len(self.all_deltas),
                   skill_episodes=int(skill_episodes), delta_g=sum(dg) / len(dg) if dg else None,
                   gate_frac=m.get("gate_frac", 0.0), distill_loss=m.get("distill_loss", 0.0), **{"lambda": self.lam})
        return row, (f" | phase {self.phase} skills {self.mined} (a {row['active']} c {row['candidate']} "
                     f"r {row['retired']}) dg {'-' if not dg else format(row['delta_g'], '+.2f')} "
                     f"gate {row['gate_frac']:.3f} distill {row['distill_loss']:.3g}")

    def eval_skill_of(self, suite):
        def skill_of(task):  # the best active skill of the task's key, or none
            sk = self.bank.retrieve(*describe(suite, task), None, explore=False)
            return R.format_skill(sk.fields) if sk else None
        return skill_of

    def markdown(self):
        return self.bank.markdown()

    def summary(self):
        c = self.bank.counts()
        return (f" | ended in phase {self.phase}, {self.mined} skills mined ({self.dropped} dropped): "
                f"{c['active']} active, {c['candidate']} candidate, {c['retired']} retired -> {self.a.out}/bank.md")


class Baseline(Skills):
    """--algo d2skill / reskill: the baseline's own skill state (baselines/) behind the same hooks. Every rank
    makes the same calls on the same gathered episodes, so the state stays equal everywhere."""

    def __init__(self, a, log, suite, miner, state=None):
        super().__init__(a, log)
        cls = BASELINES[a.algo]
        self.impl = cls.from_state(a, suite.description, state) if state is not None else cls(a, suite.description)
        self.suite, self.miner, self.n_events, self.t_skill, self.m = suite, miner, len(self.impl.events), 0.0, {}

    def write(self, messages):
        """The reflection / creator model's greedy answers: each rank writes every W-th, every rank gets all."""
        model, tok = self.miner
        with P.unsharded(model) as m, U.amp(self.a):
            return P.unstrided(P.all_gather(mine.write(m, tok, P.strided(messages))), len(messages))

    def skills(self, it, tasks, rng):
        t = time.time()
        out = self.impl.assign(it + 1, tasks, self.a.group_size, rng, lambda task: describe(self.suite, task))
        self.t_skill = time.time() - t  # + the bookkeeping after the rollout: the baseline's own overhead
        return out

    def shape_rewards(self, steps, eps):
        self.impl.bonus(steps, eps)  # D2Skill: + lambda * c_i on skill-half returns (rank-local groups)

    def feedback(self, it, steps, eps):
        t = time.time()
        lite = [SimpleNamespace(traj=s.traj, step=s.step, action=s.action, anchor=s.anchor, skill=s.skill)
                for s in steps]
        self.m = self.impl.update(it + 1, P.all_gather_flat(eps), P.all_gather_flat(lite), self.write)
        for e in self.impl.events[self.n_events:]:
            self.log.event(it + 1, "skill", **e)
        self.n_events = len(self.impl.events)
        self.m["skill_s"] = self.t_skill + time.time() - t

    def row(self, skill_episodes, m):
        return {**self.m, **self.impl.counts()}, " | " + " ".join(f"{k} {v}" for k, v in self.impl.counts().items())

    def save(self, d):
        with open(os.path.join(d, "baseline.json"), "w") as f:
            json.dump(self.impl.state(), f)

    def eval_skill_of(self, suite):
        return self.impl.eval_skill_of(lambda task: describe(suite, task))

    def markdown(self):
        return self.impl.markdown()

    def summary(self):
        return " | " + ", ".join(f"{k} {v}" for k, v in self.impl.counts().items()) + f" -> {self.a.out}/bank.md"


# -----------------------------------------------------------------------------
# files: metrics, checkpoints

class Log:
    """metrics.jsonl (rank 0 writes) and the console. Event rows wait for the row of their iteration, so a crash
    mid-iteration logs none of them."""

    def __init__(self, path):
        self.path, self.pending = path, []

    def event(self, it, kind, **kw):
        self.pending.append({"event": kind, "iter": it, **kw})
        P.print0(f"[{kind} @ {it}] " + ", ".join(f"{k}: {v}" for k, v in kw.items()))

    def write(self, row):
        if P.master():
            with open(self.path, "a") as f:
                for r in self.pending + [row]:
                    f.write(json.dumps(r) + "\n")
                f.flush()
                os.fsync(f.fileno())
        self.pending.clear()


def save_checkpoint(out, policy, opt, state, write_extra=None):
    """Write ckpt.tmp fully, then swap it in: a crash leaves either the old or the new checkpoint.
    write_extra(dir), if given, writes more files (SIRI's bank and buffer) into it before the swap.
    Every rank calls it (FSDP2 gathers the full state); rank 0 writes."""
    msd, osd = P.state_dicts(policy, opt)
    if P.master():
        tmp, final, old = (os.path.join(out, d) for d in ("ckpt.tmp", "ckpt", "ckpt.old"))
        shutil.rmtree(tmp, ignore_errors=True)
        M.save(P.inner(policy), tmp, state=msd)  # LoRA: adapters merged (a plain HF checkpoint), and saved apart
        if getattr(P.inner(policy), "lora", None):
            M.save_adapters(P.inner(policy), tmp)
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


def write_bank_md(run):
    """bank.md, the readable skill bank, atomically (SIRI and the baselines)."""
    text = run.sk.markdown()
    if text is not None and P.master():
        with open(os.path.join(run.a.out, "bank.md.tmp"), "w") as f:
            f.write(text)
        os.replace(os.path.join(run.a.out, "bank.md.tmp"), os.path.join(run.a.out, "bank.md"))


def checkpoint(run, it):
    save_checkpoint(run.a.out, run.policy, run.opt, {"iter": it, "rl_s": run.rl_clock, "bad_streak": run.streak,
                                                     **run.sk.state()}, run.sk.save)
    write_bank_md(run)


# -----------------------------------------------------------------------------
# setting up a run: inputs first (one-line errors before any model is loaded), then the models

def make_suites(a):
    """The training suite (--train-tasks, --train-types) and the two held-out suites, and --bank's skill bank:
    built before the policy, so a missing or broken data file ends the run at once, in one line."""
    env_kw = envs.flag_options(a.env, a)  # the options the env module's FLAGS names (shop: --webshop-data)
    try:
        train = envs.make(a.env, "train", seed=a.seed, **({"n_tasks": a.train_tasks} if a.train_tasks else {}), **env_kw)
        evals = {s: envs.make(a.env, s, n_tasks=a.final_eval_tasks, seed=a.seed, **env_kw)
                 for s in ("eval_seen", "eval_unseen")}
        bank = mine.SkillBank.load(a.bank) if a.bank else None
    except (ValueError, OSError, ImportError) as e:  # a data loader's error names the file; no traceback
        raise SystemExit(f"{a.env}: {' '.join(str(e).split())}")
    if a.train_types:
        types = [task_type(train, t) for t in train.tasks]
        if missing := [t for t in a.train_types if t not in types]:
            raise SystemExit(f"--train-types: no training task of type {', '.join(missing)} in --env {a.env} "
                             f"(its types: {', '.join(sorted(set(types)))})")
        train = dataclasses.replace(train, tasks=[t for t, k in zip(train.tasks, types) if k in a.train_types])
    if len(train.tasks) < a.groups and not a.eval_only:
        raise SystemExit(f"--groups {a.groups} needs as many training tasks; the pool has {len(train.tasks)}")
    return train, evals, bank


def prepare_out(a):
    """The run directory: a half-swapped checkpoint repaired, --resume's checks, args.json. -> ckpt dir."""
    os.makedirs(a.out, exist_ok=True)
    ckpt, args_path = os.path.join(a.out, "ckpt"), os.path.join(a.out, "args.json")
    if P.master() and (a.resume or a.eval_only) and not os.path.exists(ckpt) and os.path.exists(ckpt + ".old"):
        os.replace(ckpt + ".old", ckpt)  # a crash between save_checkpoint's two renames: the last full checkpoint
    P.barrier()
    if a.resume:
        if not os.path.exists(os.path.join(ckpt, "state.json")):
            raise SystemExit(f"--resume: no checkpoint at {ckpt}")
        saved = json.load(open(args_path))
        diff = {k: (saved.get(k), v) for k, v in vars(a).items() if k not in ("resume", "eval_only") and saved.get(k) != v}
        if diff:
            raise SystemExit(f"--resume with different flags than the run in {a.out}: {diff}")
    elif not a.eval_only and P.master():  # an evaluation leaves the training run's args.json as it is
        with open(args_path, "w") as f:
            json.dump(vars(a), f, indent=2)
    return ckpt


def load_models(a, dev, ckpt):
    """(tokenizer, policy, frozen reference or None, the path the policy started from): --model, or the embedded
    policy (rank 0 builds it, or finds it built; the others wait), or the run's checkpoint when resuming."""
    from transformers import AutoTokenizer
    init_path = a.model
    if not init_path:
        import bootstrap
        kw = {"env": a.env, "seed": a.seed, "history": a.history}
        init_path = os.path.join(a.out, "policy")
        if P.master():
            bootstrap.build(init_path, **kw)
        P.barrier()
    dtype = getattr(torch, a.dtype)
    resumed = a.resume or (a.eval_only and os.path.exists(os.path.join(ckpt, "state.json")))
    lora = a.lora_rank > 0 and not a.eval_only  # LoRA: the initial weights, frozen, + adapters (resumed: the saved ones)
    policy = M.load(ckpt if resumed and not lora else init_path, device=dev, dtype=dtype)
    if lora and resumed:
        M.load_adapters(policy, ckpt)
    elif lora:
        M.add_lora(policy, a.lora_rank, a.lora_alpha, seed=a.seed)
    policy.grad_checkpointing = a.grad_ckpt
    policy = P.wrap(policy, a.shard)
    ref = None
    if a.kl_coef > 0 and not a.eval_only and lora:  # the base weights with adapters off: no second copy
        ref = M.AdaptersOff(P.inner(policy))
    elif a.kl_coef > 0 and not a.eval_only:  # the frozen initial policy; sharded like the policy under FSDP
        ref = M.load(init_path, device=dev, dtype=dtype).requires_grad_(False)
        ref = P.wrap(ref, "fsdp") if P.is_fsdp(policy) else ref
    return AutoTokenizer.from_pretrained(init_path), policy, ref, init_path


def setup(a, dev):
    """Everything a run needs, as one namespace `run` (resumed from --out/ckpt with --resume)."""
    train, evals, bank = make_suites(a)
    ckpt = prepare_out(a)
    torch.manual_seed(a.seed)
    tok, policy, ref, init_path = load_models(a, dev, ckpt)
    run = SimpleNamespace(a=a, dev=dev, ckpt=ckpt, init_path=init_path, tok=tok, policy=policy, ref=ref,
                          opt=U.optimizer(policy, a.lr), train=train, evals=evals, start=0, rl_clock=0.0, streak=0,
                          log=Log(os.path.join(a.out, "metrics.jsonl")),
                          prompter=R.Prompter(tok, train.description, history=a.history, think=a.think,
                                              max_prompt_tokens=a.max_prompt_tokens),
                          sampling=R.Sampling(temperature=a.temperature, max_new_tokens=a.max_new_tokens))
    miner = (policy, tok)  # the current weights (mine.mine runs under torch.no_grad), or --miner
    if a.algo not in ("gigpo", "grpo") and a.miner:
        from transformers import AutoTokenizer
        miner = (M.load(a.miner, device=dev, dtype=getattr(torch, a.dtype)).eval(), AutoTokenizer.from_pretrained(a.miner))
    state = json.load(open(os.path.join(ckpt, "state.json"))) if os.path.exists(os.path.join(ckpt, "state.json")) else {}
    if a.resume or a.eval_only:
        run.start, run.rl_clock, run.streak = state.get("iter", 0), state.get("rl_s", 0.0), state.get("bad_streak", 0)
    if a.algo == "siri":
        run.sk = Siri(a, run.log, train, miner, bank)
        if a.resume:
            run.sk.load(ckpt, state)
    elif a.algo in BASELINES:
        run.sk = Baseline(a, run.log, train, miner,
                          json.load(open(os.path.join(ckpt, "baseline.json"))) if a.resume else None)
    else:
        run.sk = Skills(a, run.log)
    if a.resume:
        P.load_optimizer(policy, run.opt, os.path.join(ckpt, "optimizer.pt"))
        if P.master():
            resume_metrics(run.log.path, run.start)
        P.print0(f"resumed from {ckpt} at iteration {run.start}")
    return run


# -----------------------------------------------------------------------------
# one iteration

def iteration(run, it):
    """One RL iteration (0-based `it`), the steps of the module docstring. -> (metrics row, console suffix)."""
    a, sk, t0 = run.a, run.sk, time.time()
    rng = random.Random(a.seed * 1_000_003 + it)  # the same stream on every rank (tasks, mining, retrieval)
    gen = torch.Generator(device=run.dev).manual_seed(a.seed * 1_000_003 + it + 1_000_000_007 * P.RANK)
    tasks = rng.sample(run.train.tasks, a.groups)                          # 1. G tasks
    run.policy.eval()
    skills, skill_ids = sk.skills(it, tasks, rng)                          # 2. SIRI: phase, mining, retrieval
    steps, eps, st = play(run, it, tasks, skills, skill_ids, gen)          # 3. this rank's G / W groups, N each
    t_roll = time.time() - t0
    sk.shape_rewards(steps, eps)                                           #    (D2Skill: its return bonus)
    adv, keep, groups = advantages(steps, eps, a)                          # 4. GiGPO advantages
    sk.feedback(it, steps, eps)                                            # 5. delta_g -> lifecycle, wins -> buffer
    delta_of, blocks, lam = sk.internalization(it, run.tok)                # 6. L_base + lambda L_int
    m, n_bwd, t_train = update(run, steps, adv, keep, rng, delta_of, blocks, lam)
    return metrics_row(run, it, steps, eps, keep, groups, st, m, n_bwd, (t_roll, t_train, t0))  # 7. log


def play(run, it, tasks, skills, skill_ids, gen):
    """Step 3: this rank's G / W groups (whole groups per rank), all N rollouts of each, under the skills (or
    plain prompts) step 2 assigned to all G x N envs."""
    a = run.a
    per_rank = a.groups // P.WORLD
    if skills is not None:
        skills, skill_ids = P.my_slice(skills), P.my_slice(skill_ids)
    with P.unsharded(run.policy) as m, U.amp(a):
        steps, eps, st = R.rollout(m, run.tok, run.prompter, run.train, P.my_slice(tasks), a.group_size, run.sampling,
                                   generator=gen, skills=skills, skill_ids=skill_ids, max_steps=a.max_steps,
                                   env_errors=a.env_errors, group_base=P.RANK * per_rank,
                                   traj_base=P.RANK * per_rank * a.group_size)
    if not steps:  # (only --env-errors fail with every env of this rank failing at reset)
        raise RuntimeError(f"iteration {it + 1}: every environment on rank {P.RANK} failed at reset")
    return steps, eps, st


def update(run, steps, adv, keep, rng, delta_of, blocks, lam):
    """Step 6: one epoch of PPO over the kept samples (update.train_step); with lam > 0 (phase 2) each mini-batch
    adds lam x L_int on the skill samples of groups with delta_g > 0. -> (metrics, backward passes, seconds)."""
    run.policy.train()
    t1 = time.time()
    m, n_bwd, run.streak = U.train_step(run.policy, run.ref, run.opt, [steps[k] for k in keep], adv[keep], run.a, rng,
                                        [delta_of.get(steps[k].group) for k in keep], blocks, lam, spare=steps[0],
                                        streak=run.streak)
    return m, n_bwd, time.time() - t1


def metrics_row(run, it, steps, eps, keep, groups, st, m, n_bwd, times):
    """The iteration's metrics row: sums over ranks, then means; wall-clock times of the slowest rank."""
    t_roll, t_train, t0 = times
    n_tok = sum(len(steps[k].prompt) + len(steps[k].response) for k in keep)
    (E, won, score, reward, S, valid, ep_len, trained, n_mixed, n_groups, gen_tok, n_tok, env_err, sk_eps) = \
        P.all_sum([len(eps), sum(e.won for e in eps), sum(e.score for e in eps), sum(s.reward for s in steps),
                   len(steps), sum(s.valid for s in steps), sum(e.steps for e in eps), len(keep), groups[0],
                   groups[1], st["gen_tokens"], n_tok, st.get("env_errors", 0), sum(e.skill is not None for e in eps)])
    t_roll, gen_s, env_s, t_train, iter_s = P.all_max([t_roll, st["gen_s"], st["env_s"], t_train, time.time() - t0])
    row = dict(iter=it + 1, success=won / E, score=score / E, reward=reward / E, valid=valid / S, ep_len=ep_len / E,
               samples=int(S), trained_samples=int(trained), mixed_groups=n_mixed / n_groups, env_errors=int(env_err),
               rollout_s=t_roll, gen_s=gen_s, env_s=env_s, train_s=t_train, train_tok_s=n_tok / max(t_train, 1e-9),
               gen_tok_s=gen_tok / max(gen_s, 1e-9), iter_s=iter_s, **m)
    ranks = P.check_ranks(run.policy, samples=len(steps), episodes=len(eps), backward=n_bwd)
    if ranks:  # per rank: the load split, and the invariants that keep DDP / FSDP from hanging or drifting
        row["ranks"] = ranks
    run.rl_clock += row["iter_s"]
    row["rl_s"] = run.rl_clock
    extra, line = run.sk.row(sk_eps, m)
    row.update(extra)
    return row, line


def console(row, line):
    P.print0(f"it {row['iter']:4d} | success {row['success']:.3f} | reward {row['reward']:.2f} | valid {row['valid']:.3f}"
             f" | len {row['ep_len']:.1f} | mixed {row['mixed_groups']:.2f} | kl {row.get('kl', 0):.4f}{line} | "
             f"gen {row['gen_s']:.1f}s env {row['env_s']:.1f}s train {row['train_s']:.1f}s "
             f"({row['train_tok_s']:.0f} tok/s) | {row['iter_s']:.1f}s (RL {row['rl_s'] / 60:.1f} min)"
             + (f" | SKIPPED {row['skipped_updates']} non-finite updates" if row["skipped_updates"] else ""))


# -----------------------------------------------------------------------------
# evaluation

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


def evaluate(run, it, n, with_skills=False):
    """The first n held-out tasks of each split, plain prompt (with_skills: the skill method's choice); each rank
    plays every W-th task, rank 0 logs the merged result."""
    a = run.a
    row = {"iter": it, "eval": True, "rl_s": run.rl_clock, **({"with_skills": True} if with_skills else {})}
    for s, suite in run.evals.items():
        with P.unsharded(run.policy) as m, U.amp(a):
            r = R.evaluate(m, run.tok, run.prompter, suite, P.strided(suite.tasks[:n]), temperature=EVAL_TEMPERATURE,
                           seed=a.seed + P.RANK, max_new_tokens=a.max_new_tokens, max_steps=a.eval_max_steps,
                           skill_of=run.sk.eval_skill_of(suite) if with_skills else None, env_errors=a.env_errors)
        row[s] = merge_evals(P.all_gather(r))
    run.log.write(row)
    P.print0(f"eval{' with skills' if with_skills else ''} @ {it}: " + "  ".join(
        f"{s} success {row[s]['success']:.3f} score {row[s]['score']:.3f}" for s in run.evals))
    return row


def eval_only(run):
    row = evaluate(run, run.start, run.a.final_eval_tasks)
    row["policy"] = run.ckpt if os.path.exists(os.path.join(run.ckpt, "state.json")) else run.init_path
    if P.master():
        with open(os.path.join(run.a.out, "eval.json"), "w") as f:
            json.dump(row, f, indent=2)
    return row


def finish(run, done):
    """The final evaluation (and with skills, --eval-with-skills), final.json, the results line, the table and
    the learning curve (when matplotlib is installed)."""
    a = run.a
    final = evaluate(run, done, a.final_eval_tasks)
    if a.eval_with_skills and isinstance(run.sk, (Siri, Baseline)):
        final["with_skills"] = evaluate(run, done, a.final_eval_tasks, with_skills=True)
    if not P.master():
        return final
    with open(os.path.join(a.out, "final.json"), "w") as f:
        json.dump(final, f, indent=2)
    write_bank_md(run)
    line = "  ".join(f"{s} success {final[s]['success']:.3f} score {final[s]['score']:.3f}" for s in run.evals)
    print(f"results: {a.algo}{'' if a.algo in ('gigpo', 'grpo') else '/' + a.backbone} on {a.env}, {done} iterations, "
          f"{run.rl_clock / 60:.1f} RL min, plain prompt: {line}{run.sk.summary()}", flush=True)
    import report  # (not at import time: training needs no plotting)
    rows = report.read_metrics(run.log.path)
    try:
        report.learning_curve(rows, os.path.join(a.out, "curve.png"), f"{a.algo} on {a.env}, seed {a.seed}")
        note = f"(learning curve: {a.out}/curve.png)"
    except ImportError:
        note = "(no learning curve: matplotlib is not installed; pip install -r requirements-plot.txt)"
    print(report.run_table(rows) + "\n" + note, flush=True)
    return final


# -----------------------------------------------------------------------------

def main(argv=None):
    a = get_args(argv)
    dev = P.init(a.device)  # this rank's device ('cuda' -> 'cuda:LOCAL_RANK')
    if a.groups % P.WORLD:
        raise SystemExit(f"--groups {a.groups} must be a multiple of the {P.WORLD} ranks (whole groups per rank)")
    if a.threads:
        torch.set_num_threads(a.threads)
    run = setup(a, dev)
    if a.eval_only:
        return eval_only(run)
    if run.start == 0:
        evaluate(run, 0, a.eval_tasks)
    done = run.start
    for it in range(run.start, a.iters):
        row, line = iteration(run, it)
        run.log.write(row)
        console(row, line)
        done = it + 1
        if a.eval_every and done % a.eval_every == 0 and done < a.iters:
            evaluate(run, done, a.eval_tasks)
        out_of_time = a.max_rl_minutes and run.rl_clock >= 60 * a.max_rl_minutes
        if done % a.save_every == 0 or done == a.iters or out_of_time:
            checkpoint(run, done)
        if out_of_time:
            P.print0(f"stopping after {done} iterations: --max-rl-minutes {a.max_rl_minutes} reached")
            break
    return finish(run, done)


if __name__ == "__main__":
    main()
    P.exit()  # (torchrun: leave the process group together)
