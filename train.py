"""
train.py: the RL run. GiGPO (default) or GRPO on a built-in environment.

    python train.py --algo gigpo                      # household, embedded tiny policy, CPU
    python train.py --algo grpo --env shop --seed 1
    python train.py --model /path/to/Qwen2.5-1.5B-Instruct --device cuda --dtype bfloat16 --think

One iteration: sample G training tasks; roll out N envs per task in lockstep
(rollout.py); GiGPO advantages per step sample (gigpo.py); one epoch of PPO
updates over the samples in --updates mini-batches, each accumulated over
micro-batches so that the token mean is exact. Every --eval-every iterations
the plain-prompt policy is evaluated on held-out tasks. Everything random is
derived from (--seed, iteration), so a resumed run continues exactly.

Output directory (--out): metrics.jsonl (one line per iteration and per
evaluation), ckpt/ (the policy in HF format + optimizer + state, swapped in
atomically so a crash never leaves a half-written checkpoint), policy/ (the
embedded bootstrap policy when no --model is given), args.json.

Departures from the GiGPO setup (SPEC 3), all flags:
1. The embedded tiny policy needs a far larger learning rate than 1e-6
   (default 2e-4 without --model; 1e-6 with one).
2. Old log-probs are the ones the sampler computed (model.generate returns the
   log-prob of every sampled token under softmax(logits / T), T the rollout
   temperature); --recompute-old-logp recomputes them with the training
   forward as verl does (worth it in bf16). As in verl, all log-probs (policy,
   old, reference) and the entropy are those of the tempered policy.
"""

import argparse
import json
import os
import random
import shutil
import time

import torch

import envs
import gigpo
import model as M
import rollout as R


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--env", default="household", choices=sorted(envs.REGISTRY), help="built-in environment")
    g.add_argument("--algo", default="gigpo", choices=["gigpo", "grpo"], help="base optimizer (grpo = gigpo with omega 0)")
    g.add_argument("--model", default="", help="HF checkpoint dir (model + tokenizer); empty = build the embedded tiny policy")
    g.add_argument("--seed", type=int, default=0, help="seed for tasks, sampling, bootstrap and init")
    g.add_argument("--out", default="runs/default", help="output directory (metrics.jsonl, ckpt/, policy/)")
    g.add_argument("--resume", action="store_true", help="continue from --out/ckpt (same flags required)")
    g.add_argument("--device", default="cpu", help="torch device")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="policy dtype")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    g.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast for generation and training forwards (float32 weights and optimizer)")
    g = p.add_argument_group("rollout")
    g.add_argument("--iters", type=int, default=40, help="RL iterations")
    g.add_argument("--max-rl-minutes", type=float, default=0,
                   help="also stop once rollouts + updates (evaluation excluded) took this long (0 = no limit)")
    g.add_argument("--groups", type=int, default=8, help="task groups per iteration (G)")
    g.add_argument("--group-size", type=int, default=8, help="rollouts per task group (N)")
    g.add_argument("--history", type=int, default=2, help="past (observation, action) pairs in the prompt")
    g.add_argument("--think", action="store_true", help="ask for <think>...</think> before the action (real LLMs)")
    g.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    g.add_argument("--max-new-tokens", type=int, default=0, help="response cap (0 = 32 action-only, 512 with --think)")
    g.add_argument("--max-prompt-tokens", type=int, default=4096, help="longer prompts are an error")
    g.add_argument("--room-size", default="small", help="household room size: small | alfworld")
    g.add_argument("--train-tasks", type=int, default=0,
                   help="size of the training task pool (0 = the whole train split; small = an overfitting check)")
    g.add_argument("--max-steps", type=int, default=0,
                   help="episode step cap in training rollouts (0 = the env's own: 50 household, 15 shop)")
    g = p.add_argument_group("GiGPO / PPO")
    g.add_argument("--lr", type=float, default=0.0, help="AdamW learning rate (0 = 2e-4 embedded policy, 1e-6 with --model)")
    g.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up over this many optimizer steps")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip")
    g.add_argument("--updates", type=int, default=4, help="optimizer steps per iteration (mini-batches, one epoch)")
    g.add_argument("--micro-tokens", type=int, default=32768, help="tokens per forward/backward micro-batch")
    g.add_argument("--gamma", type=float, default=0.95, help="discount for step returns")
    g.add_argument("--omega", type=float, default=1.0, help="weight of the step advantage (grpo forces 0)")
    g.add_argument("--norm", default="mean_std", choices=["mean_std", "mean"], help="advantage normalisation")
    g.add_argument("--episode-stats", default="traj", choices=["traj", "step"],
                   help="episode advantage statistics: over trajectories (paper) or over steps (reference code)")
    g.add_argument("--invalid-penalty", type=float, default=0.1, help="penalty for an invalid action format")
    g.add_argument("--clip", type=float, default=0.2, help="PPO clip range (both sides)")
    g.add_argument("--dual-clip", type=float, default=3.0, help="dual-clip bound for negative advantages")
    g.add_argument("--entropy-coef", type=float, default=0.001, help="entropy bonus")
    g.add_argument("--kl-coef", type=float, default=0.01, help="k3 KL to the initial policy (0 = no reference model)")
    g.add_argument("--keep-uniform-groups", action="store_true",
                   help="also train on groups whose rollouts all scored the same (zero advantage: only the entropy "
                        "and KL terms act on them); by default they are left out, as DAPO's dynamic sampling does")
    g.add_argument("--recompute-old-logp", action="store_true", help="recompute old log-probs with the training forward")
    g = p.add_argument_group("evaluation and checkpoints")
    g.add_argument("--eval-every", type=int, default=10, help="evaluate every k iterations (0 = only at the end)")
    g.add_argument("--eval-tasks", type=int, default=100, help="held-out tasks per split for periodic evaluation")
    g.add_argument("--final-eval-tasks", type=int, default=300, help="held-out tasks per split at the end")
    g.add_argument("--eval-max-steps", type=int, default=0, help="episode step cap in evaluation (0 = the env's own)")
    g.add_argument("--eval-temperature", type=float, default=0.4, help="sampling temperature for evaluation")
    g.add_argument("--save-every", type=int, default=10, help="checkpoint every k iterations")
    g.add_argument("--bootstrap-demos", type=int, default=0, help="expert episodes for the embedded policy (0 = its default)")
    a = p.parse_args(argv)
    if a.algo == "grpo":
        a.omega = 0.0
    a.lr = a.lr or (1e-6 if a.model else 2e-4)
    a.max_new_tokens = a.max_new_tokens or (512 if a.think else 32)
    return a


# -----------------------------------------------------------------------------

def log_jsonl(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(out, policy, opt, state):
    """Write ckpt.tmp fully, then swap it in: a crash leaves either the old or the new checkpoint."""
    tmp, final, old = (os.path.join(out, d) for d in ("ckpt.tmp", "ckpt", "ckpt.old"))
    shutil.rmtree(tmp, ignore_errors=True)
    M.save(policy, tmp)
    torch.save(opt.state_dict(), os.path.join(tmp, "optimizer.pt"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(state, f)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def micro_batches(idx, lengths, budget):
    """Split sample indices into consecutive chunks of at most `budget` tokens (at least one sample each)."""
    out, cur, n = [], [], 0
    for i in idx:
        if cur and n + lengths[i] > budget:
            out.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += lengths[i]
    return out + [cur] if cur else out


def amp(a):
    return torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16, enabled=a.amp)


def train_step(policy, ref, opt, steps, adv, a, rng):
    """One epoch of PPO over the step samples in a.updates mini-batches. Returns mean metrics."""
    order = list(range(len(steps)))
    rng.shuffle(order)
    lengths = [len(s.prompt) + len(s.response) for s in steps]
    metrics = {}
    for u in range(a.updates):
        mb = order[u * len(order) // a.updates:(u + 1) * len(order) // a.updates]
        n_tok = sum(len(steps[i].response) for i in mb)
        if n_tok == 0:
            continue
        opt.zero_grad(set_to_none=True)
        for chunk in micro_batches(mb, lengths, a.micro_tokens):
            prompts, resps = [steps[i].prompt for i in chunk], [steps[i].response for i in chunk]
            with amp(a):
                logp, ent = M.score(policy, prompts, resps, temperature=a.temperature)
            mask = torch.zeros_like(logp)
            old = torch.zeros_like(logp)
            for k, i in enumerate(chunk):
                mask[k, :len(resps[k])] = 1
                old[k, :len(resps[k])] = torch.tensor(steps[i].logprobs)
            if a.recompute_old_logp:  # (on-policy: the first mini-batch's ratio is exactly 1 then)
                with torch.no_grad(), amp(a):
                    old = M.score(policy, prompts, resps, temperature=a.temperature)[0]
            ref_logp = None
            if ref is not None:
                with torch.no_grad(), amp(a):
                    ref_logp = M.score(ref, prompts, resps, temperature=a.temperature)[0]
            loss, m = gigpo.policy_loss(logp, old, adv[chunk].to(logp.device), mask, ref_logp=ref_logp, entropy=ent,
                                        clip_low=a.clip, clip_high=a.clip, dual_clip=a.dual_clip,
                                        entropy_coef=a.entropy_coef, kl_coef=a.kl_coef, total_tokens=n_tok)
            loss.backward()
            w = float(mask.sum()) / n_tok
            for k, v in m.items():
                if isinstance(v, (int, float)):
                    metrics[k] = metrics.get(k, 0.0) + v * w / a.updates
        gn = torch.nn.utils.clip_grad_norm_(policy.parameters(), a.grad_clip)
        metrics["grad_norm"] = metrics.get("grad_norm", 0.0) + float(gn) / a.updates
        n_steps = opt.state[opt.param_groups[0]["params"][0]].get("step", 0)  # survives --resume
        for group in opt.param_groups:
            group["lr"] = a.lr * min(1.0, (float(n_steps) + 1) / a.warmup) if a.warmup else a.lr
        opt.step()
    return metrics


def main(argv=None):
    a = get_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    ckpt = os.path.join(a.out, "ckpt")
    args_path = os.path.join(a.out, "args.json")
    if a.resume:
        if not os.path.exists(os.path.join(ckpt, "state.json")):
            raise SystemExit(f"--resume: no checkpoint at {ckpt}")
        saved = json.load(open(args_path))
        diff = {k: (saved.get(k), v) for k, v in vars(a).items() if k not in ("resume",) and saved.get(k) != v}
        if diff:
            raise SystemExit(f"--resume with different flags than the run in {a.out}: {diff}")
    else:
        with open(args_path, "w") as f:
            json.dump(vars(a), f, indent=2)
    torch.manual_seed(a.seed)
    env_kw = {"room_size": a.room_size} if a.env == "household" else {}

    from transformers import AutoTokenizer
    init_path = a.model
    if not init_path:
        import bootstrap
        kw = dict(env=a.env, seed=a.seed, history=a.history)
        if a.env == "household":
            kw["room_size"] = a.room_size
        if a.bootstrap_demos:
            kw["demos"] = a.bootstrap_demos
        init_path = bootstrap.build(os.path.join(a.out, "policy"), **kw)
    dtype = getattr(torch, a.dtype)
    tok = AutoTokenizer.from_pretrained(init_path)
    policy = M.load(ckpt if a.resume else init_path, device=a.device, dtype=dtype)
    ref = M.load(init_path, device=a.device, dtype=dtype).eval() if a.kl_coef > 0 else None
    opt = torch.optim.AdamW(policy.parameters(), lr=a.lr, weight_decay=a.weight_decay, betas=(0.9, 0.999))
    start, rl_clock = 0, 0.0  # rl_clock: wall clock of rollouts + updates, evaluation excluded
    if a.resume:
        opt.load_state_dict(torch.load(os.path.join(ckpt, "optimizer.pt")))
        state = json.load(open(os.path.join(ckpt, "state.json")))
        start, rl_clock = state["iter"], state.get("rl_s", 0.0)
        print(f"resumed from {ckpt} at iteration {start}", flush=True)

    train = envs.make(a.env, "train", seed=a.seed, **({"n_tasks": a.train_tasks} if a.train_tasks else {}), **env_kw)
    prompter = R.Prompter(tok, train.description, history=a.history, think=a.think, max_prompt_tokens=a.max_prompt_tokens)
    eval_suites = {s: envs.make(a.env, s, n_tasks=a.final_eval_tasks, seed=a.seed, **env_kw)
                   for s in ("eval_seen", "eval_unseen")}
    metrics_path = os.path.join(a.out, "metrics.jsonl")
    sampling = R.Sampling(temperature=a.temperature, max_new_tokens=a.max_new_tokens)

    def run_eval(it, n):
        row = {"iter": it, "eval": True, "rl_s": rl_clock}
        for s, suite in eval_suites.items():
            with amp(a):
                r = R.evaluate(policy, tok, prompter, suite, suite.tasks[:n], temperature=a.eval_temperature,
                               seed=a.seed, max_new_tokens=a.max_new_tokens, max_steps=a.eval_max_steps)
            row[s] = r
        log_jsonl(metrics_path, row)
        print(f"eval @ {it}: " + "  ".join(f"{s} success {row[s]['success']:.3f} score {row[s]['score']:.3f}"
                                           for s in eval_suites), flush=True)
        return row

    if start == 0:
        run_eval(0, a.eval_tasks)
    done_iters = start
    for it in range(start, a.iters):
        t0 = time.time()
        rng = random.Random(a.seed * 1_000_003 + it)
        tasks = rng.sample(train.tasks, a.groups)
        gen = torch.Generator(device=a.device).manual_seed(a.seed * 1_000_003 + it)
        policy.eval()
        with amp(a):
            steps, eps, st = R.rollout(policy, tok, prompter, train, tasks, a.group_size, sampling, generator=gen,
                                       max_steps=a.max_steps)
        t_roll = time.time() - t0
        adv = gigpo.gigpo_advantages(torch.tensor([s.reward for s in steps]), torch.tensor([s.valid for s in steps]),
                                     torch.tensor([s.group for s in steps]), torch.tensor([s.traj for s in steps]),
                                     torch.tensor([s.step for s in steps]), [s.anchor for s in steps],
                                     gamma=a.gamma, invalid_penalty=a.invalid_penalty, omega=a.omega, norm=a.norm,
                                     episode_stats=a.episode_stats)["adv"]
        by_group = {}
        for e in eps:
            by_group.setdefault(e.group, set()).add(round(e.score, 6))
        mixed = {gid for gid, v in by_group.items() if len(v) > 1}
        keep = [k for k, s in enumerate(steps) if a.keep_uniform_groups or s.group in mixed]
        policy.train()
        t1 = time.time()
        m = train_step(policy, ref, opt, [steps[k] for k in keep], adv[keep], a, rng) if keep else {}
        t_train = time.time() - t1
        n_tok = sum(len(steps[k].prompt) + len(steps[k].response) for k in keep)
        row = dict(iter=it + 1, success=sum(e.won for e in eps) / len(eps), score=sum(e.score for e in eps) / len(eps),
                   reward=sum(s.reward for s in steps) / len(eps), valid=sum(s.valid for s in steps) / len(steps),
                   ep_len=sum(e.steps for e in eps) / len(eps), samples=len(steps), trained_samples=len(keep),
                   mixed_groups=len(mixed) / len(by_group), rollout_s=t_roll,
                   gen_s=st["gen_s"], env_s=st["env_s"], train_s=t_train, train_tok_s=n_tok / max(t_train, 1e-9),
                   gen_tok_s=st["gen_tokens"] / max(st["gen_s"], 1e-9), iter_s=time.time() - t0, **m)
        rl_clock, done_iters = rl_clock + row["iter_s"], it + 1
        row["rl_s"] = rl_clock
        log_jsonl(metrics_path, row)
        print(f"it {it + 1:4d} | success {row['success']:.3f} | reward {row['reward']:.2f} | valid {row['valid']:.3f} | "
              f"len {row['ep_len']:.1f} | mixed {row['mixed_groups']:.2f} | kl {m.get('kl', 0):.4f} | gen {st['gen_s']:.1f}s env {st['env_s']:.1f}s "
              f"train {t_train:.1f}s ({row['train_tok_s']:.0f} tok/s) | {row['iter_s']:.1f}s (RL {rl_clock / 60:.1f} min)", flush=True)
        if a.eval_every and (it + 1) % a.eval_every == 0 and it + 1 < a.iters:
            run_eval(it + 1, a.eval_tasks)
        out_of_time = a.max_rl_minutes and rl_clock >= 60 * a.max_rl_minutes
        if (it + 1) % a.save_every == 0 or it + 1 == a.iters or out_of_time:
            save_checkpoint(a.out, policy, opt, {"iter": it + 1, "rl_s": rl_clock})
        if out_of_time:
            print(f"stopping after {it + 1} iterations: --max-rl-minutes {a.max_rl_minutes} reached", flush=True)
            break
    final = run_eval(done_iters, a.final_eval_tasks)
    with open(os.path.join(a.out, "final.json"), "w") as f:
        json.dump(final, f, indent=2)
    return final


if __name__ == "__main__":
    main()
