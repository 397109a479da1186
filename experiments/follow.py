"""Does the policy follow skills? Success on held-out tasks of the skill-dependent types with the plain prompt,
the correct reference skill of the task's type, and a wrong one (another type's, bootstrap.WRONG_SKILL); the
same tasks and sampling seed in every condition, differences paired per task.

    python -m experiments.follow --policy runs/policy            # -> results/follow.json
"""

import argparse

import bootstrap as B
import rollout as R
from experiments import common as C


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="a bootstrap.py checkpoint directory")
    p.add_argument("--per-split", type=int, default=150, help="tasks of the skill-dependent types per held-out split")
    p.add_argument("--types", default=",".join(C.SHORT[t] for t in C.SKILL_TYPES),
                   help="task types to measure (household short names: heat, cool, clean, look, pick, two)")
    p.add_argument("--name", default="follow", help="result file name under results/")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    types = tuple(B.HOUSEHOLD_RARE[t] for t in a.types.split(","))
    policy, tok, history = C.load(a.policy, a.threads)
    tasks = C.held_out(types, a.per_split)
    skill = lambda ttype: R.format_skill(B.reference_skill(ttype))
    conds = {"plain": None, "correct": lambda t: skill(t.task_type), "wrong": lambda t: skill(B.WRONG_SKILL[t.task_type])}
    wins = {}
    for name, fn in conds.items():
        wins[name] = C.outcomes(policy, tok, history, tasks, fn)
        print(f"{name}: {sum(wins[name])}/{len(tasks)} won", C.by_type(tasks, wins[name]), flush=True)
    diffs = {f"{c} - plain": dict(zip(("mean", "se"), C.paired(wins["plain"], wins[c]))) for c in ("correct", "wrong")}
    for k, v in diffs.items():
        print(f"{k}: {v['mean']:+.3f} +- {v['se']:.3f} (paired over {len(tasks)} tasks)")
    C.write(a.name, dict(policy=a.policy, types=[C.SHORT[t] for t in types], n_tasks=len(tasks), temperature=0.4,
                         success={k: sum(w) / len(w) for k, w in wins.items()},
                         by_type={k: C.by_type(tasks, w) for k, w in wins.items()}, paired=diffs, wins=wins))


if __name__ == "__main__":
    main()
