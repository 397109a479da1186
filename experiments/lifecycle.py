"""Validation and lifecycle: does paired validation activate correct skills and retire wrong ones?

Per skill-dependent type, three seeded skills: the type's reference skill (correct) and two wrong ones (another
procedure's reference skill, bootstrap.WRONG_SKILL, and the simple pick-and-place skill, what a miner writes
from a trajectory that skipped the procedure). The policy is held fixed: phase 1's validation without
training. Each group of N rollouts of a training task of that type draws one of its type's skills uniformly
(the bank explores candidates this way) and gives it to the second half (mine.paired_split); its delta_g
(mine.paired_deltas) is recorded, until every skill has --uses groups. A lifecycle decision of a skill
depends on its own deltas only, so every rule below is applied to the same recorded sequences:

    paper     mine.SkillBank as train.py runs it (n_eval = 3), replayed on the deltas: from 3 uses on, after
              each use, mean < 0 retires (an active skill too), a candidate with mean > 0 activates, 0 waits;
              a retired skill is used no more. The decision is the status after the last use.
    n6        the same bank with n_eval = 6
    ties      the first decision after 3 uses: mean > 0 activates, mean <= 0 retires
    se        after >= 3 uses, decide once |mean| >= 2 standard errors (activate if positive, retire if
              negative); at --uses without such a margin, retire (the skill showed no benefit)

A decision is right when a correct skill is activated or a wrong one retired; undecided counts as wrong.

    python -m experiments.lifecycle --policy runs/policy --seeds 0 1 2     # -> results/lifecycle.json
"""

import argparse
import json
import math
import random

import torch

import bootstrap as B
import envs
import mine
import rollout as R
from experiments import common as C

PICK = "pick_and_place_simple"


def seeded_skills(types):
    """[(label, key, correct?, skill block)] for every skill-dependent type."""
    out = []
    for t in types:
        for other, right in ((t, True), (B.WRONG_SKILL[t], False), (PICK, False)):
            out.append((f"{C.SHORT[t]}:{C.SHORT[other]}", t, right, R.format_skill(B.reference_skill(other))))
    return out


def record(policy, tok, history, skills, uses, seed, groups=8, n=8):
    """{label: [delta_g, ...]} with at least `uses` deltas per skill."""
    suite = envs.make("household", "train", seed=seed)
    pool = {t: [x for x in suite.tasks if x.task_type == t] for t in {k for _, k, _, _ in skills}}
    prompter = R.Prompter(tok, suite.description, history=history)
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    deltas = {label: [] for label, *_ in skills}
    while min(len(v) for v in deltas.values()) < uses:
        todo = [s for s in skills if len(deltas[s[0]]) < uses]
        picked = [rng.choice(todo) for _ in range(groups)]
        tasks = [rng.choice(pool[key]) for _, key, _, _ in picked]
        blocks, ids = [], []
        for k, (label, _, _, block) in enumerate(picked):
            for use in mine.paired_split(n):
                blocks.append(block if use else None)
                ids.append(k if use else None)
        with torch.no_grad():
            eps = R.rollout(policy, tok, prompter, suite, tasks, n, R.Sampling(temperature=1.0), generator=g,
                            skills=blocks, skill_ids=ids)[1]
        for k, d in mine.paired_deltas(eps).values():
            deltas[picked[k][0]].append(d)
        print({k: len(v) for k, v in deltas.items()}, flush=True)
    return deltas


def replay(ds, n_eval):
    """(status, uses at its last change) of a skill in a mine.SkillBank(n_eval) that records these deltas; it
    records no more once retired (retrieval never returns a retired skill)."""
    bank = mine.SkillBank(n_eval=n_eval)
    sid = bank.add(B.reference_skill(PICK), "key", 0, dict(task="", actions=[]))
    changed = len(ds)
    for i, d in enumerate(ds):
        before = bank.skills[sid].status
        bank.update(sid, d, i)
        if bank.skills[sid].status != before:
            changed = i + 1
        if bank.skills[sid].status == "retired":
            break
    return bank.skills[sid].status, changed


def decide(ds, rule, uses):
    """(decision, uses it took): 'active', 'retired' or 'candidate' (undecided) under a rule, on the first
    `uses` deltas (a skill may have recorded a few more in its last round)."""
    ds = ds[:uses]
    if rule in ("paper", "n6"):
        return replay(ds, 6 if rule == "n6" else 3)
    if rule == "ties":
        if len(ds) < 3:
            return "candidate", len(ds)
        return ("active" if sum(ds[:3]) > 0 else "retired"), 3
    for i in range(3, uses + 1):  # "se"
        m, se = C.mean_se(ds[:i])
        if se > 0 and abs(m) >= 2 * se or (se == 0 and m != 0):
            return ("active" if m > 0 else "retired"), i
    return "retired", uses


RULES = ("paper", "ties", "n6", "se")


def noise(runs, uses):
    """What a decision is up against: the mean delta_g of correct and of wrong skills (per skill over its first
    `uses` groups, then over skills), the standard deviation of one group's delta_g (pooled within skills), and
    the uses a skill would need for a threshold halfway between the two means to sit 1.645 standard errors
    from each (about 95% right decisions per skill, one-sided, normal approximation)."""
    out = {}
    for kind, want in (("correct", True), ("wrong", False)):
        per = [v["deltas"][:uses] for run in runs.values() for v in run.values() if v["correct"] == want]
        m, se = C.mean_se([sum(d) / len(d) for d in per])
        ss = sum((x - sum(d) / len(d)) ** 2 for d in per for x in d)
        out[kind] = dict(mean=m, se=se, sd_group=math.sqrt(ss / sum(len(d) - 1 for d in per)), skills=len(per))
    sd = math.sqrt((out["correct"]["sd_group"] ** 2 + out["wrong"]["sd_group"] ** 2) / 2)
    half = (out["correct"]["mean"] - out["wrong"]["mean"]) / 2
    out["uses_for_95"] = math.ceil((1.645 * sd / half) ** 2) if half > 0 else None
    return out


def summarize(runs, uses):
    """Per rule: the share of right decisions and the mean uses they took; plus noise()."""
    summary = {}
    for r in RULES:
        for run in runs.values():
            for v in run.values():
                v["decisions"][r] = decide(v["deltas"], r, uses)
        right = [(v["decisions"][r][0] == ("active" if v["correct"] else "retired")) for run in runs.values()
                 for v in run.values()]
        taken = [v["decisions"][r][1] for run in runs.values() for v in run.values()]
        summary[r] = dict(right=sum(right) / len(right), n=len(right), mean_uses=sum(taken) / len(taken))
        print(f"{r}: {sum(right)}/{len(right)} right decisions, mean uses {summary[r]['mean_uses']:.1f}", flush=True)
    summary["noise"] = noise(runs, uses)
    print("noise", summary["noise"], flush=True)
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", help="the policy whose rollouts record the deltas")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--uses", type=int, default=12, help="groups recorded per skill")
    p.add_argument("--group-size", type=int, default=8, help="N: N/2 plain and N/2 with the skill")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--replay", help="a result file of this script: apply the rules to its recorded deltas again "
                                    "(no rollouts; the recording's command is kept as recorded_by)")
    p.add_argument("--name", default="lifecycle")
    a = p.parse_args()
    if a.replay:
        old = json.load(open(a.replay))
        runs, keep = old["runs"], {k: old[k] for k in ("policy", "seeds", "uses", "group_size", "types")}
        keep["recorded_by"] = old.get("recorded_by", f"{old['command']} ({old['date']}, commit {old['commit']})")
        C.write(a.name, dict(keep, summary=summarize(runs, old["uses"]), runs=runs))
        return
    if not a.policy:
        p.error("--policy is required (or --replay)")
    policy, tok, history = C.load(a.policy, a.threads)
    skills = seeded_skills(C.SKILL_TYPES)
    runs = {}
    for seed in a.seeds:
        deltas = record(policy, tok, history, skills, a.uses, seed, n=a.group_size)
        runs[str(seed)] = {label: dict(correct=right, deltas=deltas[label], decisions={})
                           for label, _, right, _ in skills}
    C.write(a.name, dict(policy=a.policy, seeds=a.seeds, uses=a.uses, group_size=a.group_size,
                         types=[C.SHORT[t] for t in C.SKILL_TYPES], summary=summarize(runs, a.uses), runs=runs))


if __name__ == "__main__":
    main()
