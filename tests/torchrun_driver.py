"""Launched by tests/test_parallel.py under `torchrun --nproc_per_node=2` (gloo, CPU). Not a test module.

    torchrun --nproc_per_node=2 tests/torchrun_driver.py siri <train.py flags>   # a SIRI run through all phases
    torchrun --nproc_per_node=2 tests/torchrun_driver.py update <policy dir> <ddp|fsdp> <out.json>
    torchrun --nproc_per_node=2 tests/torchrun_driver.py baseline <train.py flags with --algo d2skill|reskill>

siri: the same test hooks as tests/test_siri.py's siri_run (the tiny random policy never wins): every plain
episode counts as won, the miner answers bootstrap's reference skill, every delta_g is +1 and advantages are
positive, so phases 1 and 2 and the distillation run on every rank. With CRASH_AT=k in the environment the k-th
training rollout raises (then the test resumes the run).
update: one train_step on 12 synthetic samples split 6 / 6 over the ranks, against the same step on all 12 in
one process (computed on every rank with WORLD forced to 1): the parameters must agree.
baseline: episodes whose traj id is divisible by 4 count as won, and the skill writer (mine.write) answers
"When to apply: For <the task of the prompt>" so the gathered answers can be checked against their prompts;
after every update each rank appends its baseline state to <out>/base_rank<R>.jsonl.
"""
import json
import os
import random
import re
import sys
from dataclasses import replace
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import bootstrap  # noqa: E402
import gigpo  # noqa: E402
import mine  # noqa: E402
import model as M  # noqa: E402
import parallel as P  # noqa: E402
import rollout as R  # noqa: E402
import train  # noqa: E402
import update as U  # noqa: E402


def siri(flags):
    real_succ, real_deltas, real_adv = mine.successes, mine.paired_deltas, gigpo.gigpo_advantages
    mine.successes = lambda steps, eps: real_succ(steps, [replace(e, won=True) for e in eps])
    mine.mine = lambda model, tok, desc, trajs, **kw: ([(bootstrap.reference_skill(t.task_type), t) for t in trajs], 0)
    mine.paired_deltas = lambda eps: {g: (sid, 1.0) for g, (sid, _) in real_deltas(eps).items()}
    gigpo.gigpo_advantages = lambda *a, **kw: (lambda r: dict(r, adv=r["adv"].abs() + 0.5))(real_adv(*a, **kw))
    crash_at, real_rollout, n = int(os.environ.get("CRASH_AT", "0")), R.rollout, [0]

    def rollout(*args, **kw):  # CRASH_AT=k: the k-th training rollout of this process raises (a crashed run)
        n[0] += args[5] > 1  # n > 1: a training rollout (evaluation plays groups of one)
        if n[0] == crash_at and args[5] > 1:
            raise RuntimeError("simulated crash")
        return real_rollout(*args, **kw)
    R.rollout = rollout
    train.main(flags)


def baseline(flags):
    real_rollout = R.rollout

    def rollout(*args, **kw):
        steps, eps, st = real_rollout(*args, **kw)
        return steps, [replace(e, won=e.traj % 4 == 0) if args[5] > 1 else e for e in eps], st

    def write(model, tok, messages, **kw):
        tasks = [re.search(r"solved the task: (.*?)\.\n", m).group(1) for m in messages]
        return [f"When to apply: For {re.sub(r'[0-9]', '', t)}\nStrategy: Follow the path.\nKey steps: a | b | c"
                for t in tasks]
    R.rollout, mine.write = rollout, write
    a = train.get_args(flags)
    cls = train.BASELINES[a.algo]
    real_update = cls.update

    def update(self, *args, **kw):
        m = real_update(self, *args, **kw)
        with open(os.path.join(a.out, f"base_rank{P.RANK}.jsonl"), "a") as f:
            f.write(json.dumps(self.state(), sort_keys=True) + "\n")
        return m
    cls.update = update
    train.main(flags)


def update(policy_dir, shard, out):
    torch.set_num_threads(1)
    a = train.get_args(["--model", policy_dir, "--algo", "gigpo", "--updates", "1", "--lr", "1e-3", "--kl-coef", "0.05"])
    g = torch.Generator().manual_seed(0)
    steps = []
    for i in range(12):  # ragged prompts and responses
        p, r = torch.randint(3, 200, (5 + i % 4,), generator=g).tolist(), torch.randint(3, 200, (1 + i % 3,), generator=g).tolist()
        steps.append(R.Step(p, r, (-torch.rand(len(r), generator=g)).tolist(), 0.0, True, "", i // 6, i, 0))
    adv = torch.randn(12, generator=g)

    def run(model, mine_idx):
        ref = M.load(policy_dir).requires_grad_(False)
        ref = P.wrap(ref, "fsdp") if shard == "fsdp" and P.WORLD > 1 else ref
        opt = U.optimizer(model, a.lr)
        st = [steps[i] for i in mine_idx]
        m, n_bwd, _ = U.train_step(model, ref, opt, st, adv[mine_idx], a, random.Random(0), [None] * len(st),
                                       {}, 0.0, spare=steps[0])
        sd, _ = P.state_dicts(model)
        return {k: v.double().sum().item() for k, v in sd.items()}, m, n_bwd

    world = P.WORLD
    P.WORLD = 1  # the single-process reference, on every rank
    ref_sums, ref_m, _ = run(M.load(policy_dir), list(range(12)))
    P.WORLD = world
    a.micro_tokens = 10 + 20 * P.RANK  # ragged micro-batch counts across ranks: fillers must keep them in step
    sums, m, n_bwd = run(P.wrap(M.load(policy_dir), shard), P.my_slice(list(range(12))))
    if P.master():
        json.dump(dict(ref=ref_sums, dist=sums, ref_metrics=ref_m, metrics=m), open(out, "w"))


if __name__ == "__main__":
    P.init("cpu")
    if sys.argv[1] == "siri":
        siri(sys.argv[2:])
    elif sys.argv[1] == "baseline":
        baseline(sys.argv[2:])
    else:
        update(*sys.argv[2:])
    P.exit()
