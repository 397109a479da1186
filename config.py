"""
config.py: train.py's command line. Every flag with its default and help (`python train.py --help` prints the
common ones with train.py's docstring, `--help-all` every one), the --quick preset, and the checks that turn a
bad configuration into a one-line error before any work.

The constants of the papers that nobody sets are not flags: they live, documented, in the module that uses them
(train.py: GiGPO's advantage; update.py: PPO, the optimizer, L_int's form and cap; mine.SkillBank: the skill
lifecycle and retrieval). The baselines' flags (--d2-*, --rs-*) show in --help only with their --algo.
"""

import argparse
import json
import os
import sys

import envs
import model as M
from baselines import d2skill, reskill

BASELINES = {"d2skill": d2skill.D2Skill, "reskill": reskill.ReSkill}  # other skill methods on the same loop


# --quick: every phase of the pipeline in minutes on 2 cores (numbers from it are a smoke test, not results)
QUICK = dict(out="runs/quick", iters=4, groups=4, group_size=4, max_steps=30, eval_every=0, eval_tasks=30,
             final_eval_tasks=30, phase1_min_frac=0.25, mine_every=1, lambda_ramp=1)
# flags that --help lists by name only (their help: --help-all)
ADVANCED = ("--max-prompt-tokens", "--warmup", "--weighting", "--recompute-old-logp", "--max-bad-steps", "--env-errors", "--alfworld-games",
            "--eval-max-steps", "--save-every", "--lora-rank", "--lora-alpha", "--distill")


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


def parser(doc=None, algo="siri", full=False):
    """train.py's argparse parser. full: help for every flag; else the ADVANCED ones and other algorithms'
    baseline flags are listed by name only."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    hidden = []

    def add(g, flag, shown=True, **kw):
        if not (full or shown) or (flag in ADVANCED and not full):
            hidden.append(flag)
            kw["help"] = argparse.SUPPRESS
        g.add_argument(flag, **kw)

    g = p.add_argument_group("run")
    add(g, "--env", default="household", choices=sorted(envs.REGISTRY), help="built-in environment")
    add(g, "--algo", default="siri", choices=["siri", "gigpo", "grpo", *BASELINES],
        help="siri (three phases on --backbone), plain gigpo / grpo (grpo = gigpo with omega 0), or the "
             "baselines d2skill / reskill (baselines/, on --backbone)")
    add(g, "--backbone", default="gigpo", choices=["gigpo", "grpo"],
        help="the base optimizer of siri, d2skill and reskill; not used by plain gigpo / grpo runs")
    add(g, "--model", default="", help="HF checkpoint dir (model + tokenizer); empty = build the embedded tiny policy")
    add(g, "--seed", type=int, default=0, help="seed for tasks, sampling, bootstrap and init")
    add(g, "--out", default="runs/default", help="output directory (metrics.jsonl, ckpt/, policy/)")
    add(g, "--resume", action="store_true", help="continue from --out/ckpt (same flags required)")
    add(g, "--eval-only", action="store_true",
        help="only evaluate (plain prompt, --final-eval-tasks per split) and exit: the policy in the run's "
             "ckpt/ if there is one, else --model (else the embedded policy); writes eval.json there")
    add(g, "--quick", action="store_true",
        help="a first look in minutes: the shipped embedded policy and a short run (QUICK: 4 iterations "
             "of 4x4 episodes, every phase); flags given explicitly still win")
    g = p.add_argument_group("hardware")
    add(g, "--device", default="cpu", help="torch device")
    add(g, "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="policy dtype")
    add(g, "--amp", action="store_true",
        help="bfloat16 autocast for generation and training forwards (float32 weights and optimizer)")
    add(g, "--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    add(g, "--shard", default="ddp", choices=["ddp", "fsdp"],
        help="under torchrun: ddp (a model that fits one device) or fsdp (FSDP2 fully_shard per layer)")
    add(g, "--grad-ckpt", action="store_true", help="activation checkpointing per decoder layer in the update")
    add(g, "--lora-rank", type=int, default=0,
        help="LoRA: train rank-R adapters on q/k/v/o and the MLP projections, base weights frozen, the KL reference "
             "the same model with adapters off (one GPU, e.g. 7B); 0 = full weights")
    add(g, "--lora-alpha", type=float, default=0, help="LoRA scale alpha (update (alpha / R) B A; 0 = 2 x --lora-rank)")
    g = p.add_argument_group("tasks and rollouts")
    add(g, "--iters", type=int, default=10, help="RL iterations")
    add(g, "--max-rl-minutes", type=float, default=0,
        help="also stop once rollouts + updates (evaluation excluded) took this long (0 = no limit); "
             "SIRI's phases are fractions of --iters, so such a run may stop before phase 2")
    add(g, "--groups", type=int, default=4, help="task groups per iteration (G)")
    add(g, "--group-size", type=int, default=8, help="rollouts per task group (N)")
    add(g, "--train-tasks", type=int, default=0,
        help="size of the training task pool (0 = the whole train split; small = an overfitting check)")
    add(g, "--train-types", default="",
        help="comma-separated task types: train only on tasks of these types (household: ALFWorld's names, e.g. "
             "pick_heat_then_place_in_recep; shop: product categories); evaluation keeps every type")
    add(g, "--max-steps", type=int, default=0,
        help="episode step cap in training rollouts (0 = the env's own: 50 household, 15 shop)")
    add(g, "--history", type=int, default=None,
        help="past (observation, action) pairs in the prompt (default 2; shop 1, which keeps the embedded "
             "policy's prompts near 500 tokens)")
    add(g, "--think", action="store_true", help="ask for <think>...</think> before the action (real LLMs)")
    add(g, "--temperature", type=float, default=1.0, help="rollout sampling temperature")
    add(g, "--max-prompt-tokens", type=int, default=4096, help="longer prompts are an error (GiGPO: 2048 / 4096)")
    add(g, "--max-new-tokens", type=int, default=None, help="response cap in tokens (default: 32; with --think 512)")
    add(g, "--webshop-data", default=os.environ.get("WEBSHOP_DATA", ""),
        help="shop: WebShop's data dir (items_shuffle_1000.json, items_ins_v2_1000.json; "
             "envs/webshop_data.py); default $WEBSHOP_DATA; '' = the generated catalog")
    add(g, "--alfworld-data", default=None,
        help="alfworld: official data dir (holding json_2.1.1/, as alfworld-download writes it); default "
             "$ALFWORLD_DATA; unset or '' = games generated offline (envs/alfworld_gen.py)")
    add(g, "--alfworld-games", default="runs/alfworld_games",
        help="alfworld: cache dir of the generated games (written on first use, kept)")
    add(g, "--env-errors", default="raise", choices=["raise", "fail"],
        help="an exception in the environment: raise (stop, naming env, task and action) or fail "
             "(end that episode as failed, go on; counted as env_errors in the metrics)")
    g = p.add_argument_group("update (GiGPO / GRPO, PPO)")
    add(g, "--lr", type=float, default=None,
        help="AdamW learning rate (default 5e-5 for a bootstrap.py policy, 1e-6 for any other --model)")
    add(g, "--updates", type=int, default=4, help="optimizer steps per iteration (mini-batches, one epoch)")
    add(g, "--micro-tokens", type=int, default=32768, help="tokens per forward/backward micro-batch")
    add(g, "--gamma", type=float, default=0.95, help="discount for step returns")
    add(g, "--kl-coef", type=float, default=0.01, help="k3 KL to the initial policy (0 = no reference model)")
    add(g, "--keep-uniform-groups", action="store_true",
        help="also train on groups whose rollouts all scored the same (zero advantage: only the entropy "
             "and KL terms act on them); by default they are left out, as DAPO's dynamic sampling does")
    add(g, "--warmup", type=int, default=0, help="linear learning-rate warm-up over this many optimizer steps")
    add(g, "--weighting", default="token", choices=["token", "traj"],
        help="token: every response token of the mini-batch alike (verl's token-mean); traj: advantages "
             "scaled so every trajectory weighs the same in total, whatever its length")
    add(g, "--recompute-old-logp", action="store_true",
        help="recompute old log-probs with the training forward (verl does; worth it in bf16)")
    add(g, "--max-bad-steps", type=int, default=5,
        help="stop after this many optimizer updates in a row skipped for a non-finite loss or gradient")
    g = p.add_argument_group("SIRI (--algo siri)")
    add(g, "--phase1-min-frac", type=float, default=0.1,
        help="minimum fraction of --iters spent in phase 0 before phase 1 may start")
    add(g, "--n-req", type=int, default=None,
        help="success-buffer size that triggers phase 1 (N_req; default 2 x --groups)")
    add(g, "--phase2-frac", type=float, default=0.2,
        help="final fraction of --iters in phase 2, internalization (the paper: 20 of 150 = 0.133; 0.2 gives "
             "the default 10-iteration run two; 1.0: phase 2 from the first iteration)")
    add(g, "--mine-every", type=int, default=3, help="mine skills every k iterations of phases 1-2 (I_mine)")
    add(g, "--miner", default="",
        help="another local checkpoint (model + tokenizer) to mine with (d2skill: to reflect with, reskill: "
             "the creator); empty = the policy itself")
    add(g, "--bank", default="",
        help="start from this skill bank (the bank.json a run's checkpoint holds, e.g. hand-written reference "
             "skills already active) instead of an empty one")
    add(g, "--lambda-max", type=float, default=1.0, help="L_int coefficient after the ramp (0: no L_int, the control)")
    add(g, "--distill", choices=("kl", "nll"), default="kl",
        help="L_int's form: full-vocabulary KL(teacher || student), or the NLL of the sampled token (no teacher)")
    add(g, "--lambda-ramp", type=int, default=2, help="phase-2 iterations over which lambda ramps up to max")
    for name, key, mod in (("D2Skill (--algo d2skill; baselines/d2skill.py)", "d2skill", d2skill),
                           ("ReSkill (--algo reskill; baselines/reskill.py)", "reskill", reskill)):
        g = p.add_argument_group(name)
        for flag, typ, default, hlp in mod.FLAGS:
            add(g, flag, shown=algo == key, type=typ, default=default, help=hlp)
    g = p.add_argument_group("evaluation and checkpoints")
    add(g, "--eval-every", type=int, default=0, help="evaluate every k iterations (0 = only at the end)")
    add(g, "--eval-tasks", type=int, default=100, help="held-out tasks per split for periodic evaluation")
    add(g, "--final-eval-tasks", type=int, default=100, help="held-out tasks per split at the end")
    add(g, "--eval-with-skills", action="store_true",
        help="after the plain-prompt final evaluation, evaluate again with skills: siri each task's best "
             "active skill (the paper's ablation of SIRI without phase 2, with skills); d2skill its bank, "
             "reskill its accepted skill set (as their papers evaluate)")
    add(g, "--eval-max-steps", type=int, default=0, help="episode step cap in evaluation (0 = the env's own)")
    add(g, "--save-every", type=int, default=10, help="checkpoint every k iterations")
    if hidden:
        base = [f for f in hidden if f in ADVANCED]
        p.add_argument_group("more (--help-all)", "also: " + ", ".join(base) + ("; the baselines' --d2-* and --rs-* "
                             "flags (listed with --algo d2skill / reskill)" if len(hidden) > len(base) else ""))
    return p


def get_args(argv=None, doc=None):
    """The parsed flags of train.py (doc: its --help description), with the derived defaults filled in."""
    argv = sys.argv[1:] if argv is None else list(argv)
    full = "--help-all" in argv
    argv = ["--help" if x == "--help-all" else x for x in argv]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", default="siri")
    pre.add_argument("--quick", action="store_true")
    known = pre.parse_known_args(argv)[0]
    p = parser(doc, known.algo, full)
    if known.quick:
        p.set_defaults(**QUICK)
    a = p.parse_args(argv)
    if a.history is None:  # the embedded policy's default for this env (bootstrap.ENV_DEFAULTS)
        import bootstrap
        a.history = {**bootstrap.DEFAULTS, **bootstrap.ENV_DEFAULTS.get(a.env, {})}["history"]
    if a.algo in ("siri", "d2skill") and (a.group_size < 2 or a.group_size % 2):
        p.error(f"--algo {a.algo} splits each group in half (paired validation): --group-size {a.group_size} must be even")
    if not (0 <= a.phase1_min_frac <= 1 and 0 <= a.phase2_frac <= 1 and a.mine_every >= 1 and (a.n_req or 0) >= 0):
        p.error("--phase1-min-frac and --phase2-frac must lie in [0, 1], --mine-every >= 1, --n-req >= 0")
    if a.algo == "siri" and a.phase2_frac < 1 and a.phase1_min_frac + a.phase2_frac > 1:
        p.error(f"--phase1-min-frac {a.phase1_min_frac} + --phase2-frac {a.phase2_frac} > 1: phase 1 could never start")
    if a.lora_rank < 0 or (a.lora_rank and a.shard == "fsdp"):
        p.error("--lora-rank must be >= 0, and LoRA runs without --shard fsdp (the base weights fit one device)")
    a.lora_alpha = a.lora_alpha or 2.0 * a.lora_rank
    if a.bank and a.algo != "siri":
        p.error(f"--bank is SIRI's starting skill bank; --algo {a.algo} does not use it")
    for name, d in (("--model", a.model), ("--miner", a.miner)):
        if d:
            check_checkpoint_dir(p, name, d)
    for name, f in (("--bank", a.bank),):
        if f and not os.path.isfile(f):
            p.error(f"{name} {f}: no such file")
    a.train_types = [t for t in a.train_types.split(",") if t] if isinstance(a.train_types, str) else a.train_types
    a.n_req = 2 * a.groups if a.n_req is None else a.n_req
    embedded = not a.model or os.path.exists(os.path.join(a.model, "bootstrap.json"))  # a bootstrap.py policy
    a.lr = (5e-5 if embedded else 1e-6) if a.lr is None else a.lr
    a.max_new_tokens = (512 if a.think else 32) if a.max_new_tokens is None else a.max_new_tokens
    return a
