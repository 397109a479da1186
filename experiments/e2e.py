"""End to end: SIRI against GiGPO and GRPO from the same starting policy, on the same seeds and held-out tasks.

Each (method, seed) is one train.py run from --policy; its final evaluation (plain prompt, as SIRI is meant to
be used) covers the first --eval-tasks tasks of each held-out split, the same tasks for every run. Differences
to SIRI are paired over seeds.

    python -m experiments.e2e --policy runs/policy --seeds 0 1 2 --iters 20     # -> results/e2e.json
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from experiments import common as C

ALGOS = {"SIRI": ["--algo", "siri"], "GiGPO": ["--algo", "gigpo"], "GRPO": ["--algo", "grpo"]}
SPLITS = ("eval_seen", "eval_unseen")
HC = "heat+cool"  # the skill-dependent types, both splits pooled


def rare(final):
    """Success on the skill-dependent types (C.SKILL_TYPES) over both held-out splits of a final.json."""
    won = n = 0
    for sp in SPLITS:
        for t in C.SKILL_TYPES:
            k = final[sp]["by_type_n"].get(t, 0)
            won, n = won + final[sp]["by_type"].get(t, 0.0) * k, n + k
    return won / max(n, 1)


def run(policy, out, seed, flags, a):
    if not os.path.exists(os.path.join(out, "final.json")):
        os.makedirs(out, exist_ok=True)
        cmd = [sys.executable, "train.py", "--model", policy, "--out", out, "--seed", str(seed), "--iters",
               str(a.iters), "--groups", str(a.groups), "--group-size", str(a.group_size), "--eval-every", "0",
               "--eval-tasks", "8", "--final-eval-tasks", str(a.eval_tasks), "--threads", "1"] + flags + a.extra
        with open(os.path.join(out, "stdout.log"), "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.load(open(os.path.join(out, "final.json")))


def start(policy, out, a):
    """The starting policy's plain-prompt success on the same tasks (train.py --eval-only), cached in out."""
    path = os.path.join(out, "eval.json")
    if not os.path.exists(path):
        os.makedirs(out, exist_ok=True)
        cmd = [sys.executable, "train.py", "--model", policy, "--out", out, "--eval-only", "--final-eval-tasks",
               str(a.eval_tasks), "--threads", "1"] + a.extra
        with open(os.path.join(out, "stdout.log"), "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.load(open(path))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--eval-tasks", type=int, default=300, help="held-out tasks per split")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="runs/e2e")
    p.add_argument("--name", default="e2e")
    p.add_argument("extra", nargs="*", help="more train.py flags for every run, after --")
    a = p.parse_args()
    jobs = [(algo, s) for s in a.seeds for algo in a.algos]
    with ThreadPoolExecutor(a.workers) as ex:
        first = ex.submit(start, a.policy, os.path.join(a.out, "start"), a)
        finals = list(ex.map(lambda j: run(a.policy, os.path.join(a.out, f"{j[0].lower()}_s{j[1]}"), j[1],
                                           ALGOS[j[0]], a), jobs))
        first = first.result()
    res = {f"{algo}_s{s}": f for (algo, s), f in zip(jobs, finals)}
    for f in res.values():
        f[HC] = dict(success=rare(f))
    cols = SPLITS + (HC,)
    first[HC] = dict(success=rare(first))
    summary = {"start (iteration 0)": {sp: (first[sp]["success"], 0.0) for sp in cols}}
    for algo in a.algos:
        summary[algo] = {sp: C.mean_se([res[f"{algo}_s{s}"][sp]["success"] for s in a.seeds]) for sp in cols}
    for algo in a.algos:
        if algo != "SIRI" and "SIRI" in a.algos:
            summary[f"SIRI - {algo} (paired)"] = {
                sp: C.paired([res[f"{algo}_s{s}"][sp]["success"] for s in a.seeds],
                             [res[f"SIRI_s{s}"][sp]["success"] for s in a.seeds]) for sp in cols}
    for k, v in summary.items():
        print(k, {sp: f"{m:.3f} +- {se:.3f}" for sp, (m, se) in v.items()}, flush=True)
    desc = (f"From `{a.policy}`: {a.iters} iterations of {a.groups} x {a.group_size} episodes, seeds {a.seeds}, "
            f"plain-prompt success on the first {a.eval_tasks} tasks of each held-out split (mean over seeds; "
            f"{HC}: those of the skill-dependent types, both splits).")
    C.write(a.name, dict(policy=a.policy, seeds=a.seeds, iters=a.iters, groups=a.groups, group_size=a.group_size,
                         eval_tasks=a.eval_tasks, extra=a.extra, splits=list(cols), description=desc,
                         summary=summary, start=first, runs=res))


if __name__ == "__main__":
    main()
