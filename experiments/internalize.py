"""Internalization in isolation: does phase 2's L_int move the plain-prompt policy toward the skill-guided one?

An oracle bank (the reference skill of each skill-dependent type, already active) replaces mining (off:
--mine-every beyond the run) and validation; training tasks are those types only; every group is paired (half its rollouts with the skill) and
phase 2 runs from the first iteration. Conditions per seed, on the same tasks and rollout seeds (--conds):
    lint     --lambda-max 1 (the default schedule), L_int = the full-vocabulary KL (the default)
    control  --lambda-max 0: the same paired rollouts and base loss, no distillation
    nll      --lambda-max 1 --distill nll: L_int = the weighted NLL of the sampled token under the plain prompt
Each trained policy is then evaluated on the same held-out tasks of those types, with the plain prompt and with
the reference skill in the prompt, as is the starting policy (its two define the gap to close; a trained
policy's two, the gap left inside it).

    python -m experiments.internalize --policy runs/policy --seeds 0 1 2     # -> results/internalize.json
    python -m experiments.internalize --policy runs/policy --conds lint control nll   # + the NLL variant
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import bootstrap as B
import mine
import rollout as R
from experiments import common as C


def oracle_bank(path, types):
    """A bank holding the reference skill of each type, active from the start."""
    bank = mine.SkillBank()
    for t in types:
        sid = bank.add(B.reference_skill(t), t, 0, dict(task="reference skill", actions=[]))
        bank._move(bank.skills[sid], "active", 0, "oracle: the reference skill")
    bank.save(path)
    return path


def evaluate(policy, path, per_split, skill=False, tokenizer=None):
    """Per-task outcomes on held_out() in a subprocess (one thread), cached in `path`."""
    if not os.path.exists(path):
        subprocess.run([sys.executable, "-m", "experiments.common", "--policy", policy, "--out", path,
                        "--per-split", str(per_split)] + (["--skill"] if skill else [])
                       + (["--tokenizer", tokenizer] if tokenizer else []), check=True)
    return json.load(open(path))


CONDS = {"lint": ["--lambda-max", "1"], "control": ["--lambda-max", "0"],
         "nll": ["--lambda-max", "1", "--distill", "nll"]}


def train(policy, out, seed, flags, bank, types, a):
    """One train.py run (a subprocess, so that runs can share the cores one thread each; skipped when it
    finished before), then its evaluations: plain prompt, and reference skill in the prompt (what is left of the
    gap inside the trained policy: internalized, the skill no longer helps)."""
    if not os.path.exists(os.path.join(out, "final.json")):
        cmd = [sys.executable, "train.py", "--model", policy, "--out", out, "--seed", str(seed), "--iters",
               str(a.iters), "--groups", str(a.groups), "--group-size", str(a.group_size), "--bank", bank,
               "--train-types", ",".join(types), "--phase2-frac", "1.0", "--mine-every", str(10 ** 6),
               "--eval-every", "0", "--eval-tasks", "8", "--final-eval-tasks", "8", "--threads", "1"] + flags + a.extra
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "stdout.log"), "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    ckpt = os.path.join(out, "ckpt")
    return out, [evaluate(ckpt, os.path.join(out, f"held_out{tag}.json"), a.per_split, tag == "_skill", policy)
                 for tag in ("", "_skill")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="the starting policy (a bootstrap.py checkpoint directory)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--conds", nargs="+", default=["lint", "control"], choices=list(CONDS))
    p.add_argument("--per-split", type=int, default=150, help="held-out tasks of the types per split")
    p.add_argument("--workers", type=int, default=2, help="training runs at once (one thread each)")
    p.add_argument("--out", default="runs/internalize")
    p.add_argument("--name", default="internalize")
    p.add_argument("extra", nargs="*", help="more train.py flags, after --")
    a = p.parse_args()
    types = C.SKILL_TYPES
    os.makedirs(a.out, exist_ok=True)
    bank = oracle_bank(os.path.join(a.out, "oracle_bank.json"), types)
    assert "control" in a.conds, "every condition is compared with the control"
    jobs = [(s, c) for s in a.seeds for c in a.conds]
    with ThreadPoolExecutor(a.workers) as ex:
        outs = ex.map(lambda j: train(a.policy, os.path.join(a.out, f"{j[1]}_s{j[0]}"), j[0], CONDS[j[1]], bank,
                                      types, a), jobs)
        start = ex.map(lambda c: evaluate(a.policy, os.path.join(a.out, f"start_{c}.json"), a.per_split, c == "skill"),
                       ("plain", "skill"))
        outs, start = list(outs), dict(zip(("plain", "skill"), start))
    tasks = C.held_out(types, a.per_split)
    runs = {}
    for (seed, cond), (out, (w, ws)) in zip(jobs, outs):
        runs[f"{cond}_s{seed}"] = dict(seed=seed, cond=cond, flags=CONDS[cond], wins=w, success=sum(w) / len(w),
                                       by_type=C.by_type(tasks, w), skill_wins=ws, skill_success=sum(ws) / len(ws),
                                       metrics=[json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))
                                                if '"success"' in l and '"eval"' not in l])
        print(f"{cond} seed {seed}: plain success {sum(w) / len(w):.3f}", flush=True)
    p0, s0 = (sum(v) / len(v) for v in (start["plain"], start["skill"]))
    gap = s0 - p0
    summary = {}
    for cond in a.conds:
        xs = [runs[f"{cond}_s{s}"]["success"] for s in a.seeds]
        m, se = C.mean_se(xs)
        left = C.mean_se([runs[f"{cond}_s{s}"]["skill_success"] - runs[f"{cond}_s{s}"]["success"] for s in a.seeds])
        summary[cond] = dict(success=m, se=se, gap_closed=(m - p0) / gap if gap else None,
                             skill_success=C.mean_se([runs[f"{cond}_s{s}"]["skill_success"] for s in a.seeds]),
                             gap_left=left)
    for cond in [c for c in a.conds if c != "control"]:
        d = C.paired([runs[f"control_s{s}"]["success"] for s in a.seeds],
                     [runs[f"{cond}_s{s}"]["success"] for s in a.seeds])
        summary[f"{cond} - control"] = dict(mean=d[0], se=d[1], unit="seed")
        t = C.paired([w for s in a.seeds for w in runs[f"control_s{s}"]["wins"]],
                     [w for s in a.seeds for w in runs[f"{cond}_s{s}"]["wins"]])
        summary[f"{cond} - control, per task"] = dict(mean=t[0], se=t[1], unit="task (evaluation noise only)")
        g = C.paired([runs[f"control_s{s}"]["skill_success"] - runs[f"control_s{s}"]["success"] for s in a.seeds],
                     [runs[f"{cond}_s{s}"]["skill_success"] - runs[f"{cond}_s{s}"]["success"] for s in a.seeds])
        summary[f"{cond} - control, gap left"] = dict(mean=g[0], se=g[1], unit="seed")
    for k, v in summary.items():
        print(k, v)
    C.write(a.name, dict(policy=a.policy, types=[C.SHORT[t] for t in types], n_tasks=len(tasks), seeds=a.seeds,
                         conds=a.conds, iters=a.iters, groups=a.groups, group_size=a.group_size, extra=a.extra,
                         start=dict(plain=p0, skill=s0, plain_by_type=C.by_type(tasks, start["plain"]),
                                    skill_by_type=C.by_type(tasks, start["skill"]), wins=start),
                         summary=summary, runs=runs))


if __name__ == "__main__":
    main()
