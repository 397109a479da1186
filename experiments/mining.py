"""Mining quality: skills written from the policy's own won trajectories, judged against the environment.

Trajectories: won plain-prompt episodes of the policy on household training tasks (temperature 1.0, as in the
RL rollouts), up to --per-type per task type. Each goes through mine.mine (the mining prompt, greedy) with the
miner (the policy itself, as SIRI does, or --miner: any model.py checkpoint, e.g. SmolLM2-135M-Instruct via
`python smol.py convert`). A skill is
    well-formed   mine.parse_skill accepts the answer (three lines, 3-5 key steps, ...)
    correct       well-formed, its "when" names its own task type and no other (TYPE_WORDS), and its key steps
                  hold the type's required actions in order (REQUIRED), e.g. heat: take, heat, put.

Won trajectories are collected per seed and cached in --out, so a second miner judges the same ones.

    python -m experiments.mining --policy runs/policy                          # -> results/mining.json
    python -m experiments.mining --policy runs/policy --miner runs/smol/hf --name mining_smollm2
"""

import argparse
import json
import os
import random
import re

import torch

import envs
import mine
import rollout as R
from experiments import common as C

TYPE_WORDS = dict(heat=r"heat|heated|hot|warm|microwave", cool=r"cool|cooled|cold|chill|fridge",
                  clean=r"clean|cleaned|wash|sink|sinkbasin", look=r"look|examine|lamp|desklamp|light",
                  two=r"two|both|second|pair")
TAKE, PUT = r"take|find|search|pick|fetch|get", r"put|place|bring|carry|move"
REQUIRED = dict(pick=[TAKE, PUT], look=[TAKE, r"lamp|desklamp|light"], clean=[TAKE, r"clean|sink", PUT],
                heat=[TAKE, r"heat|microwave", PUT], cool=[TAKE, r"cool|fridge", PUT],
                two=[TAKE, PUT, r"second|another|two|again", PUT])


def names_type(when, ttype):
    hit = {t for t, w in TYPE_WORDS.items() if re.search(rf"\b({w})\b", when.lower())}
    return hit == ({ttype} if ttype in TYPE_WORDS else set())


def steps_in_order(steps, ttype):
    text, pos = steps.lower(), 0
    for pat in REQUIRED[ttype]:
        m = re.compile(rf"\b({pat})").search(text, pos)
        if not m:
            return False
        pos = m.end()
    return True


def judge(skill, ttype):
    """(well-formed, correct) of a parse_skill dict (or None) for a task of short type ttype."""
    if skill is None:
        return False, False
    return True, names_type(skill["when"], ttype) and steps_in_order(skill["steps"], ttype)


def own_wins(policy, tok, history, per_type, seed, rounds=12, batch=48):
    """mine.Success items: the policy's won plain episodes on training tasks, at most per_type per type."""
    suite = envs.make("household", "train", seed=seed)
    prompter = R.Prompter(tok, suite.description, history=history)
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    got = {}
    for _ in range(rounds):
        need = [t for t in suite.tasks if len(got.get(t.task_type, [])) < per_type]
        if not need:
            break
        with torch.no_grad():
            steps, eps, _ = R.rollout(policy, tok, prompter, suite, rng.sample(need, min(batch, len(need))), 1,
                                      R.Sampling(temperature=1.0), generator=g)
        for text, ttype, actions in mine.successes(steps, eps):
            if len(got.setdefault(ttype, [])) < per_type:
                got[ttype].append(mine.Success(text, ttype, actions, 0))
        print({C.SHORT[k]: len(v) for k, v in got.items()}, flush=True)
    return [s for v in got.values() for s in v]


def wins_of(policy, tok, history, a, seed):
    """own_wins for one seed, cached as JSON in --out (keyed by the policy and the sampling settings): every
    miner judges the same trajectories."""
    name = os.path.basename(os.path.normpath(a.policy))
    path = os.path.join(a.out, f"wins_{name}_s{seed}_{a.per_type}x{a.rounds}.json")
    if not os.path.exists(path):
        wins = own_wins(policy, tok, history, a.per_type, seed, a.rounds)
        os.makedirs(a.out, exist_ok=True)
        json.dump([dict(task=w.task, task_type=w.task_type, actions=w.actions) for w in wins], open(path, "w"))
    return [mine.Success(w["task"], w["task_type"], w["actions"], 0) for w in json.load(open(path))]


def judged(miner, mtok, wins):
    """One row per won trajectory: the miner's raw answer and its judgement (mine.mine's call, keeping the raw
    answers: mine.mine drops what does not parse)."""
    description = envs.make("household", "train", seed=0).description
    with torch.no_grad():
        answers = mine.write(miner, mtok, [mine.mining_prompt(description, w.task, w.actions) for w in wins])
    rows = []
    for w, answer in zip(wins, answers):
        ok, right = judge(mine.parse_skill(answer), C.SHORT[w.task_type])
        rows.append(dict(type=C.SHORT[w.task_type], task=w.task, steps=len(w.actions), answer=answer,
                         well_formed=ok, correct=right))
    return rows


def summarize(runs):
    """Per type: trajectories and shares pooled over seeds; "all": also the mean and standard error over seeds."""
    rows = [r for rs in runs.values() for r in rs]
    summary = {}
    for t in sorted({r["type"] for r in rows}) + ["all"]:
        rs = [r for r in rows if t in ("all", r["type"])]
        summary[t] = dict(n=len(rs), well_formed=sum(r["well_formed"] for r in rs) / len(rs),
                          correct=sum(r["correct"] for r in rs) / len(rs))
    for k in ("well_formed", "correct"):
        summary["all"][k + "_seeds"] = C.mean_se([sum(r[k] for r in rs) / len(rs) for rs in runs.values()])
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="the policy whose wins are mined")
    p.add_argument("--miner", default=None, help="the model that writes skills (default: the policy)")
    p.add_argument("--per-type", type=int, default=20, help="won trajectories per task type and seed")
    p.add_argument("--rounds", type=int, default=12, help="at most this many batches of 48 training episodes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/mining", help="cache of the won trajectories, per seed")
    p.add_argument("--name", default="mining")
    a = p.parse_args()
    policy, tok, history = C.load(a.policy, a.threads)
    miner, mtok, _ = C.load(a.miner) if a.miner else (policy, tok, history)
    runs = {}
    for seed in a.seeds:
        wins = wins_of(policy, tok, history, a, seed)
        assert wins, f"seed {seed}: the policy won no training episode: nothing to mine"
        runs[str(seed)] = judged(miner, mtok, wins)
    summary = summarize(runs)
    for t, v in summary.items():
        print(t, v, flush=True)
    C.write(a.name, dict(policy=a.policy, miner=a.miner or a.policy, per_type=a.per_type, seeds=a.seeds,
                         summary=summary, skills=runs))


if __name__ == "__main__":
    main()
