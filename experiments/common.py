"""What the experiments share: a fixed set of held-out tasks, per-task outcomes, paired statistics, result files."""

import json
import math
import os
import subprocess
import time

import torch

import bootstrap
import envs
import model as M
import rollout as R

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
SKILL_TYPES = ("pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep")  # the skill-dependent types
SHORT = {full: short for short, full in bootstrap.HOUSEHOLD_RARE.items()}  # "pick_heat_then_place_in_recep" -> "heat"


def held_out(types=SKILL_TYPES, per_split=150, seed=0, env="household"):
    """[(split, task)]: the first `per_split` tasks of the given types in each held-out split (deterministic in seed,
    the same for every condition and every run that asks for them)."""
    out = []
    for split in ("eval_seen", "eval_unseen"):
        suite = envs.make(env, split, n_tasks=per_split * 12, seed=seed)
        picked = [t for t in suite.tasks if bootstrap._task_type(t) in types][:per_split]
        assert len(picked) == per_split, f"{split}: only {len(picked)} tasks of {types} in the first {per_split * 12}"
        out += [(suite, t) for t in picked]
    return out


def load(path, threads=0, tokenizer=None):
    """(policy, tokenizer, history) of a bootstrap.py policy or a train.py checkpoint (tokenizer: the directory
    of the policy it started from; a checkpoint holds the weights only)."""
    from transformers import AutoTokenizer
    if threads:
        torch.set_num_threads(threads)
    tokenizer = tokenizer or path
    policy, tok = M.load(path).eval(), AutoTokenizer.from_pretrained(tokenizer)
    meta = os.path.join(tokenizer, "bootstrap.json")
    history = json.load(open(meta))["settings"]["history"] if os.path.exists(meta) else 2
    return policy, tok, history


def outcomes(policy, tok, history, tasks, skill_of=None, temperature=0.4, seed=0, batch=64):
    """Won (0/1) per task, in the order of `tasks` ([(suite, task)]), one episode each; skill_of(task) -> block or
    None puts a skill in the prompt. The same seed for every condition: the sampling noise is shared where the
    prompts agree."""
    wins = []
    g = torch.Generator().manual_seed(seed)
    for s in range(0, len(tasks), batch):
        chunk = tasks[s:s + batch]
        for split in dict.fromkeys(su.split for su, _ in chunk):  # a chunk may straddle the two splits
            suite = next(su for su, _ in chunk if su.split == split)
            part = [t for su, t in chunk if su.split == split]
            prompter = R.Prompter(tok, suite.description, history=history)
            with torch.no_grad():
                eps = R.rollout(policy, tok, prompter, suite, part, 1, R.Sampling(temperature=temperature),
                                generator=g, skills=[skill_of(t) for t in part] if skill_of else None)[1]
            wins += [int(e.won) for e in sorted(eps, key=lambda e: e.traj)]
    return wins


def mean_se(xs):
    n = len(xs)
    m = sum(xs) / n
    var = sum((x - m) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


def paired(a, b):
    """Mean and standard error of b - a over the same units (tasks, or seeds)."""
    assert len(a) == len(b), "paired statistics need the same units in both conditions"
    return mean_se([y - x for x, y in zip(a, b)])


def by_type(tasks, wins):
    out = {}
    for (_, t), w in zip(tasks, wins):
        out.setdefault(SHORT.get(bootstrap._task_type(t), bootstrap._task_type(t)), []).append(w)
    return {k: dict(n=len(v), success=sum(v) / len(v)) for k, v in sorted(out.items())}


COMMIT = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                        cwd=os.path.dirname(RESULTS)).stdout.strip()  # the code the experiment started from


def write(name, result):
    """results/<name>.json, atomically, with the command and commit behind it."""
    import sys
    os.makedirs(RESULTS, exist_ok=True)
    commit = COMMIT
    module = "experiments." + os.path.basename(sys.argv[0]).removesuffix(".py")
    result = dict(command=" ".join(["python -m", module] + sys.argv[1:]), commit=commit,
                  date=time.strftime("%Y-%m-%d"), **result)
    path = os.path.join(RESULTS, name + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"-> {path}", flush=True)
    return path


def main():
    """python -m experiments.common --policy DIR --out FILE [--per-split N] [--skill]: the per-task plain-prompt
    (or reference-skill) outcomes of a policy on held_out(), as JSON: a subprocess per policy lets evaluations
    run side by side, one thread each."""
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--policy", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--per-split", type=int, default=150)
    p.add_argument("--skill", action="store_true", help="the reference skill of each task's type in the prompt")
    p.add_argument("--tokenizer", default=None, help="the starting policy's directory, for a train.py checkpoint")
    a = p.parse_args()
    policy, tok, history = load(a.policy, 1, a.tokenizer)
    tasks = held_out(SKILL_TYPES, a.per_split)
    fn = (lambda t: R.format_skill(bootstrap.reference_skill(t.task_type))) if a.skill else None
    with open(a.out + ".tmp", "w") as f:
        json.dump(outcomes(policy, tok, history, tasks, fn), f)
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
