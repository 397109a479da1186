"""
config.py: train.py's command line. Every flag with its default and help (`python train.py --help` prints them
with train.py's docstring), the --quick preset, and the checks that turn a bad configuration into a one-line
error before any work.
"""

import argparse
import json
import os

import envs
import model as M
from baselines import d2skill, reskill

BASELINES = {"d2skill": d2skill.D2Skill, "reskill": reskill.ReSkill}  # [7/7]: other skill methods, same loop


# --quick: every phase of the pipeline in minutes on 2 cores (numbers from it are a smoke test, not results)
QUICK = dict(out="runs/quick", iters=4, groups=4, group_size=4, max_steps=30, eval_every=0, eval_tasks=30,
             final_eval_tasks=30, phase1_min_frac=0.25, mine_every=1, lambda_ramp=1)
QUICK_BOOTSTRAP = dict(demos=300, sft_steps=200)


def check_checkpoint_dir(p, flag, d):
    """One-line errors, before any work, for a checkpoint dir that model.load would reject."""
    cfg = os.path.join(d, "config.json")
    if not os.path.isdir(d):
        p.error(f"{flag} {d}: no such directory")
    if not os.path.isfile(cfg):
        p.error(f"{flag} {d}: no config.json (an HF checkpoint directory holds config.json, weights and tokenizer)")
    try:
        M.ModelConfig.from_hf(json.load(open(cfg)), source=cfg)
    except (ValueError, TypeError) as e:  # CheckpointError, or JSON that is not a config
        p.error(f"{flag}: {e}")


def get_args(argv=None, doc=None):
    """The parsed flags of train.py (doc: its --help description)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--env", default="household", choices=sorted(envs.REGISTRY), help="built-in environment")
    g.add_argument("--algo", default="siri", choices=["siri", "gigpo", "grpo", *BASELINES],
                   help="siri (three phases on --backbone), plain gigpo / grpo (grpo = gigpo with omega 0), or the "
                        "baselines d2skill / reskill (baselines/, on --backbone)")
    g.add_argument("--backbone", default="gigpo", choices=["gigpo", "grpo"],
                   help="the base optimizer of siri, d2skill and reskill (grpo = gigpo with omega 0); not used by "
                        "plain gigpo / grpo runs")
    g.add_argument("--model", default="", help="HF checkpoint dir (model + tokenizer); empty = build the embedded tiny policy")
    g.add_argument("--seed", type=int, default=0, help="seed for tasks, sampling, bootstrap and init")
    g.add_argument("--out", default="runs/default", help="output directory (metrics.jsonl, ckpt/, policy/)")
    g.add_argument("--resume", action="store_true", help="continue from --out/ckpt (same flags required)")
    g.add_argument("--eval-only", action="store_true",
                   help="only evaluate (plain prompt, --final-eval-tasks per split) and exit: the policy in the run's "
                        "ckpt/ if there is one, else --model (else the embedded policy); writes eval.json there")
    g.add_argument("--device", default="cpu", help="torch device")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="policy dtype")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    g.add_argument("--shard", default="ddp", choices=["ddp", "fsdp"],
                   help="under torchrun: ddp (a model that fits one device) or fsdp (FSDP2 fully_shard per layer)")
    g.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing per decoder layer in the update")
    g.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast for generation and training forwards (float32 weights and optimizer)")
    g.add_argument("--quick", action="store_true",
                   help="a first look in minutes: a smaller bootstrap (QUICK_BOOTSTRAP) and run (QUICK: 4 iterations "
                        "of 4x4 episodes, every phase); flags given explicitly still win")
    g = p.add_argument_group("rollout")
    g.add_argument("--iters", type=int, default=10, help="RL iterations")
    g.add_argument("--max-rl-minutes", type=float, default=0,
                   help="also stop once rollouts + updates (evaluation excluded) took this long (0 = no limit); "
                        "SIRI's phases are fractions of --iters, so such a run may stop before phase 2")
    g.add_argument("--groups", type=int, default=4, help="task groups per iteration (G)")
    g.add_argument("--group-size", type=int, default=8, help="rollouts per task group (N)")
    g.add_argument("--history", type=int, default=None,
                   help="past (observation, action) pairs in the prompt (default 2; shop 1, which keeps the embedded "
                        "policy's prompts near 500 tokens)")
    g.add_argument("--think", action="store_true", help="ask for <think>...</think> before the action (real LLMs)")
    g.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    g.add_argument("--max-new-tokens", type=int, default=0, help="response cap (0 = 32 action-only, 512 with --think)")
    g.add_argument("--max-prompt-tokens", type=int, default=4096, help="longer prompts are an error")
    g.add_argument("--room-size", default="small", help="household room size: small | alfworld")
    g.add_argument("--alfworld-data", default=None,
                   help="alfworld: official data dir (holding json_2.1.1/, as alfworld-download writes it); default "
                        "$ALFWORLD_DATA; unset or '' = games generated offline (envs/alfworld_gen.py)")
    g.add_argument("--alfworld-games", default="runs/alfworld_games",
                   help="alfworld: cache dir of the generated games (written on first use, kept)")
    g.add_argument("--webshop-data", default=os.environ.get("WEBSHOP_DATA", ""),
                   help="shop: WebShop's data dir (items_shuffle_1000.json, items_ins_v2_1000.json; "
                        "envs/webshop_data.py); default $WEBSHOP_DATA; '' = the generated catalog")
    g.add_argument("--train-tasks", type=int, default=0,
                   help="size of the training task pool (0 = the whole train split; small = an overfitting check)")
    g.add_argument("--max-steps", type=int, default=0,
                   help="episode step cap in training rollouts (0 = the env's own: 50 household, 15 shop)")
    g.add_argument("--env-errors", default="raise", choices=["raise", "fail"],
                   help="an exception in the environment: raise (stop, naming env, task and action) or fail "
                        "(end that episode as failed, go on; counted as env_errors in the metrics)")
    g = p.add_argument_group("GiGPO / PPO")
    g.add_argument("--lr", type=float, default=0.0, help="AdamW learning rate (0 = 5e-5 for a bootstrap.py policy, 1e-6 for any other --model)")
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
    g.add_argument("--weighting", default="token", choices=["token", "traj"],
                   help="token: every response token of the mini-batch alike (verl's token-mean); traj: advantages "
                        "scaled so every trajectory weighs the same in total, whatever its length")
    g.add_argument("--max-bad-steps", type=int, default=5,
                   help="stop after this many optimizer updates in a row skipped for a non-finite loss or gradient")
    g.add_argument("--recompute-old-logp", action="store_true", help="recompute old log-probs with the training forward")
    g = p.add_argument_group("SIRI (--algo siri)")
    g.add_argument("--phase1-min-frac", type=float, default=0.1,
                   help="minimum fraction of --iters spent in phase 0 before phase 1 may start")
    g.add_argument("--n-req", type=int, default=0,
                   help="success-buffer size that triggers phase 1 (N_req; 0 = 2 x --groups)")
    g.add_argument("--phase2-frac", type=float, default=0.2,
                   help="final fraction of --iters in phase 2, internalization (the paper: 20 of 150 = 0.133; 0.2 gives "
                        "the default 10-iteration run two); --max-rl-minutes may stop a run before it")
    g.add_argument("--mine-every", type=int, default=3, help="mine skills every k iterations of phases 1-2 (I_mine)")
    g.add_argument("--mine-count", type=int, default=0, help="buffered trajectories mined per round (0 = --groups)")
    g.add_argument("--miner", default="",
                   help="another local checkpoint (model + tokenizer) to mine with (d2skill: to reflect with, reskill: "
                        "the creator); empty = the policy itself")
    g.add_argument("--n-eval", type=int, default=3, help="uses before a skill's lifecycle decision (N_eval)")
    g.add_argument("--activate", type=float, default=0.0, help="a candidate with mean delta_g above this turns active")
    g.add_argument("--retire", type=float, default=0.0, help="a skill with mean delta_g below this is retired")
    g.add_argument("--bank-capacity", type=int, default=3, help="non-retired skills per key (lowest utility evicted)")
    g.add_argument("--p-explore", type=float, default=0.5,
                   help="probability of trying an untested candidate when the key has an active skill")
    g.add_argument("--distill", default="kl", choices=["kl", "nll"],
                   help="L_int: full-vocabulary KL(teacher || student), or NLL of the sampled token (no teacher)")
    g.add_argument("--lambda-max", type=float, default=1.0, help="L_int coefficient after the ramp")
    g.add_argument("--lambda-ramp", type=int, default=2, help="phase-2 iterations over which lambda ramps up to max")
    g.add_argument("--adv-cap", type=float, default=1.0, help="distillation token weight clip(A, 0, cap)")
    for name, mod in (("D2Skill (--algo d2skill; baselines/d2skill.py)", d2skill),
                      ("ReSkill (--algo reskill; baselines/reskill.py)", reskill)):
        g = p.add_argument_group(name)
        for flag, typ, default, hlp in mod.FLAGS:
            g.add_argument(flag, type=typ, default=default, help=hlp)
    g = p.add_argument_group("evaluation and checkpoints")
    g.add_argument("--eval-every", type=int, default=0, help="evaluate every k iterations (0 = only at the end)")
    g.add_argument("--eval-tasks", type=int, default=100, help="held-out tasks per split for periodic evaluation")
    g.add_argument("--final-eval-tasks", type=int, default=100, help="held-out tasks per split at the end")
    g.add_argument("--eval-max-steps", type=int, default=0, help="episode step cap in evaluation (0 = the env's own)")
    g.add_argument("--eval-temperature", type=float, default=0.4, help="sampling temperature for evaluation")
    g.add_argument("--eval-with-skills", action="store_true",
                   help="after the plain-prompt final evaluation, evaluate again with skills: siri each task's best "
                        "active skill (the paper's ablation of SIRI without phase 2, with skills); d2skill its bank, "
                        "reskill its accepted skill set (as their papers evaluate)")
    g.add_argument("--save-every", type=int, default=10, help="checkpoint every k iterations")
    g.add_argument("--bootstrap-demos", type=int, default=0, help="expert episodes for the embedded policy (0 = its default)")
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)
    a = p.parse_args(argv)
    if a.history is None:  # the embedded policy's default for this env (bootstrap.ENV_DEFAULTS)
        import bootstrap
        a.history = {**bootstrap.DEFAULTS, **bootstrap.ENV_DEFAULTS.get(a.env, {})}["history"]
    if a.algo == "grpo" or (a.algo not in ("gigpo", "grpo") and a.backbone == "grpo"):
        a.omega = 0.0
    if a.algo in ("siri", "d2skill") and (a.group_size < 2 or a.group_size % 2):
        p.error(f"--algo {a.algo} splits each group in half (paired validation): --group-size {a.group_size} must be even")
    if not (0 <= a.phase1_min_frac <= 1 and 0 <= a.phase2_frac <= 1 and a.mine_every >= 1 and a.n_req >= 0):
        p.error("--phase1-min-frac and --phase2-frac must lie in [0, 1], --mine-every >= 1, --n-req >= 0")
    if a.algo == "siri" and a.phase2_frac < 1 and a.phase1_min_frac + a.phase2_frac > 1:
        p.error(f"--phase1-min-frac {a.phase1_min_frac} + --phase2-frac {a.phase2_frac} > 1: phase 1 could never start")
    for name, d in (("--model", a.model), ("--miner", a.miner)):
        if d:
            check_checkpoint_dir(p, name, d)
    a.n_req = a.n_req or 2 * a.groups
    a.mine_count = a.mine_count or a.groups
    embedded = not a.model or os.path.exists(os.path.join(a.model, "bootstrap.json"))  # a bootstrap.py policy
    a.lr = a.lr or (5e-5 if embedded else 1e-6)
    a.max_new_tokens = a.max_new_tokens or (512 if a.think else 32)
    return a
