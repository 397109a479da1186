"""
bootstrap.py: the embedded default policy, for runs with no --model (docs/algorithm.md, "Embedded default policy").

No pretrained instruct model can be downloaded here, and a 135M model trains
at a few hundred tokens/s on 2 CPU cores, too slow for RL in minutes. So with
no checkpoint the project builds its own small policy, standing in for the
instruct pre-training a real LLM brings:

1. demonstrations: the env's scripted expert plays train tasks; for the
   household the *observable* expert, which searches receptacles it has not
   seen (in admissible-list order) instead of walking to hidden objects, so its
   choices can be imitated from the text. 25% of steps are random actions (not
   trained on) so that off-path states and recoveries appear. Each step is one
   (prompt, "<action>a</action>") pair, the prompt built by rollout.Prompter
   exactly as in RL;
2. skills: half of the episodes carry a skill block (a skill's three
   fields, phrasings drawn at random, from the env's SKILLS); household: half of
   the correct ones use a target-first variant that the expert then follows, so
   the block must be read to act right. The rare task types (household: heat
   and cool, the skill-dependent types) stand for procedures the policy's
   pre-training lacks: 70% of their plain episodes are played by a naive
   demonstrator that does not know the procedure (it carries the object
   straight to the target, skipping the appliance, and fails), and a quarter
   of all skill episodes carry another type's skill (WRONG_SKILL), played as
   without a skill. So the correct skill is the only reliable cue for a rare
   type's procedure, a wrong one is no help, and the plain policy still wins
   a rare task now and then (phase 0 has wins to mine). The shop keeps its
   plain rare episodes at 20% instead (no naive demonstrator). Mining
   examples (a won trajectory in mine.py's mining prompt -> the three-line
   skill) teach the policy to write skills;
3. a byte-level BPE tokenizer trained on that text with the `tokenizers`
   library, saved in HF format with a ChatML chat template; words and numbers
   are separate pre-tokens ("countertop", " 1"), so the object named in the
   task is the same token as in "take X 1 from Y" and choosing it is a match,
   not a learned association (--entity-tokens 1: "countertop 1" one token);
4. a tiny decoder (llama model type: Qwen2 without q/k/v biases, 1.8M
   parameters: width 192, 4 layers), randomly initialised, trained with the
   language-model loss on prompt and answer tokens for 450 steps, Muon on the
   hidden matrices and AdamW elsewhere. Deliberately under-trained: 600 steps
   reach ~0.57 held-out success, 450 steps ~0.30, leaving RL room to learn.

Everything is deterministic in --seed and cached: `build(...)` returns the
checkpoint directory (model + tokenizer), rebuilt only if the settings or the
env module's source change.

What is env-specific lives in the env's module (envs/__init__.py's contract):
its reference skills (SKILLS, keyed by skill key: the task type unless the env
keys finer), WRONG_SKILL, short type names for --rare, the settings that differ
from DEFAULTS (BOOTSTRAP), the settings its make_tasks takes, and household's
target-first variant and naive demonstrator. An env without SKILLS gets a policy
without skill blocks or mining examples, with a warning: SIRI cannot mine with it.

    python bootstrap.py --out runs/policy            # build (or reuse), evaluate on held-out tasks
    python bootstrap.py --out runs/policy --skills   # measure skill following instead
    python bootstrap.py --env cafe --out runs/cafe_policy --threads 2
"""

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import time
import warnings

import torch

import envs
import mine
import model as M
import rollout as R
from rollout import SKILL_MARK, Prompter, chat_ids

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DEFAULTS = dict(env="household", seed=0, demos=800, noise=0.25, vocab=4096, hidden=192, layers=4, heads=4, kv_heads=2,
                intermediate=512, sft_steps=700, optimizer="muon", batch=16, lr=3e-3, prompt_loss=1.0, history=2, room_size="small", amp=1,
                skill_frac=0.5, rare="", rare_plain=1.0, rare_naive=0.7, wrong_frac=0.25, mine_frac=0.2,
                entity_tokens=0)
# What each env needs lives in its own module (envs/__init__.py's contract): the settings that differ from
# DEFAULTS (household: rare heat, cool; shop: history 1, ASIN tokens, more demos and steps), its reference skills,
# wrong-skill map and short type names. The views below merge them over the registered envs.
ENV_DEFAULTS = {name: envs.module_attr(name, "BOOTSTRAP") for name in envs.REGISTRY}
SKILLS = {k: v for name in envs.REGISTRY for k, v in envs.module_attr(name, "SKILLS").items()}
WRONG_SKILL = {k: v for name in envs.REGISTRY for k, v in envs.module_attr(name, "WRONG_SKILL").items()}
HOUSEHOLD_RARE = envs.module_attr("household", "TYPE_NAMES")  # short names -> ALFWorld's task types
HOUSEHOLD_TYPES = set(HOUSEHOLD_RARE.values())


def settings(**kw):
    """bootstrap settings: DEFAULTS, then the env's BOOTSTRAP, then kw."""
    return {**DEFAULTS, **ENV_DEFAULTS.get(kw.get("env") or DEFAULTS["env"], {}), **kw}


def env_options(cfg):
    """The settings the env's make_tasks takes (its BOOTSTRAP_OPTIONS; household: room_size)."""
    return {k: cfg[k] for k in envs.module_attr(cfg["env"], "BOOTSTRAP_OPTIONS")}


def rare_keys(cfg):
    """--rare as skill keys: each name a key of the env's SKILLS or one of its TYPE_NAMES (household: heat)."""
    names, keys = envs.module_attr(cfg["env"], "TYPE_NAMES"), envs.module_attr(cfg["env"], "SKILLS")
    rare = tuple(names.get(r, r) for r in cfg["rare"].split(",") if r)
    if bad := [r for r in rare if r not in keys]:
        raise ValueError(f"--rare {cfg['rare']}: {', '.join(bad)} is not a skill key of env {cfg['env']!r} "
                         f"(its keys: {', '.join(keys)}; short names: {', '.join(names) or 'none'})")
    return rare


def reference_skill(task_type, rng=None, target_first=False, env=None):
    """A correct skill dict for a skill key (the task type unless the env keys finer): the SKILLS entry of `env`
    (default: of the first registered env that has the key), phrasings drawn with rng, first ones without.
    target_first: the env's variant (household: the procedure visits the target or the desklamp first)."""
    name = env or next(n for n in envs.REGISTRY if task_type in envs.module_attr(n, "SKILLS"))
    pick = (lambda xs: rng.choice(xs)) if rng else (lambda xs: xs[0])
    s = {k: pick(v) for k, v in envs.module_attr(name, "SKILLS")[task_type].items()}
    if target_first:
        variant = getattr(envs.module(name), "skill_variant", None)
        assert variant, f"env {name!r} has no skill variant (skill_variant)"
        s = variant(s, task_type)
    return s


def _task_type(task):
    return task.task_type


def naive_action(env):
    """What a demonstrator that does not know the task type's procedure plays (Env.naive_action; household: the
    expert of the simple pick-and-place task, skipping the heat / cool step); envs without one: the expert."""
    return env.naive_action() if hasattr(env, "naive_action") else env.expert_action(observable=True)


def demonstrations(suite, n, seed, prompter_text, noise=0.25, skill_frac=0.0, rare=(), rare_plain=1.0,
                   rare_naive=0.0, wrong_frac=0.0):
    """(user message, skill block or None, action) triples from expert episodes on n tasks of a shuffled train split.

    With probability `noise` a step plays a random admissible action instead (not a training pair), so the
    demonstrations also show states off the expert's path, "Nothing happens." included, and the way back: the
    env's observable expert must replan from any state (envs/__init__.py). A fraction `skill_frac` of episodes
    carry the reference skill (the env's SKILLS) of their skill key (the task type unless the env keys finer);
    in an env with a skill variant (household: target-first) half of those use it and the expert follows it
    (Env.variant_opening), so the block must be read to act right.

    The `rare` keys stand for procedures the policy's pre-training lacks (docs/algorithm.md, "The embedded
    policy"): their plain episodes are kept with probability `rare_plain`, and a fraction `rare_naive` of those
    kept is played by the naive demonstrator (naive_action), which does not know the procedure and fails. A
    fraction `wrong_frac` of skill episodes carry another key's skill (the env's WRONG_SKILL) instead: the
    expert then plays on as without a skill, naively for a rare key. So the only reliable way to the procedure
    of a rare key is the correct skill in the prompt."""
    rng = random.Random(seed)
    tasks = list(suite.tasks)
    rng.shuffle(tasks)
    env, triples, played = suite.new_env(), [], 0
    wrong, variant = envs.module_attr(suite.name, "WRONG_SKILL"), hasattr(envs.module(suite.name), "skill_variant")
    for task in tasks:
        if played == n:
            break
        skill, ttype, first, naive = None, envs.skill_key(task), False, False
        if rng.random() < skill_frac:
            if rng.random() < wrong_frac and ttype in wrong:
                skill, naive = R.format_skill(reference_skill(wrong[ttype], rng, env=suite.name)), ttype in rare
            else:
                first = rng.random() < 0.5 and variant  # (the shop's procedure has no variant)
                skill = R.format_skill(reference_skill(ttype, rng, first, env=suite.name))
        elif rare and ttype in rare:
            if rng.random() >= rare_plain:
                continue
            naive = rng.random() < rare_naive
        played += 1
        obs, past, done, t = env.reset(task), [], False, 0
        prefix = env.variant_opening() if first else []
        while not done:
            if prefix:
                a = prefix.pop(0)
            else:
                a = naive_action(env) if naive else env.expert_action(observable=True)  # what the prompt shows
            if not prefix and rng.random() < noise:
                a = rng.choice(obs.admissible) if rng.random() < 0.8 else rng.choice(["look", "go to moon 1", "help"])
                if envs.TEMPLATE.search(a):  # an admissible template (shop: search[<your query>]): 3 task words
                    words = obs.task.split()
                    fill = " ".join(rng.sample(words, min(3, len(words))))
                    a = envs.TEMPLATE.sub(lambda m: fill, a, count=1)
            else:
                triples.append((prompter_text(obs.task, t, past, obs.text, obs.admissible), skill, a))
            past.append((obs.text, a))
            obs, r, done, info = env.step(a)
            t += 1
            if naive and hasattr(env, "naive_done") and env.naive_done(a):  # it believes the task done
                break
    return triples


def mining_examples(suite, n, seed):
    """(mining prompt, three-line skill) pairs: the noise-free expert's actions on n won train tasks and the
    reference skill of the task's skill key, so that the policy can write skills from its own successes. (The shop's
    observable expert loses some tasks; those are replaced by further draws.)"""
    rng = random.Random(seed + 1)
    tasks = rng.sample(list(suite.tasks), n)
    env, out = suite.new_env(), []
    while tasks:
        task = tasks.pop(0)
        obs, done, actions = env.reset(task), False, []
        text = obs.task
        while not done:
            actions.append(env.expert_action(observable=True))
            obs, r, done, info = env.step(actions[-1])
        if not info["won"]:
            tasks += rng.sample(list(suite.tasks), 1)
            continue
        out.append((mine.mining_prompt(suite.description, text, actions),
                    mine.skill_text(reference_skill(envs.skill_key(task), rng, env=suite.name))))
    return out


# Pre-tokenization: a word and the number after it stay one piece ("countertop 1", "apple 2"), so that with a
# large enough vocabulary every numbered receptacle and object is one token: a tiny model then picks objects by
# matching tokens instead of copying digits across positions (which it does not learn in a 5-minute budget).
# The model type must then be llama: transformers 5 attaches Qwen2's own digit-by-digit pre-tokenizer to any
# tokenizer stored beside a qwen2 config.json (tested in tests/test_rollout.py).
WORD_SPLIT = r" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
ENTITY_SPLIT = r"(?: ?[a-z]+ \d+)|" + WORD_SPLIT
ARCH = "llama"  # the Qwen2 decoder without q/k/v biases (model.py reads both)


def train_tokenizer(texts, vocab, path, split=WORD_SPLIT, extra=()):
    """A byte-level BPE tokenizer trained on `texts`, plus `extra` whole-string tokens (shop: every ASIN, so that
    clicking a product copies one token), saved in HF format with the chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer)
    tk.add_tokens(list(extra))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  chat_template=CHAT_TEMPLATE)
    tok.save_pretrained(path)
    return tok


class Optimizers:
    """Several torch optimizers stepped as one (Muon for the hidden matrices, AdamW for the rest)."""

    def __init__(self, *opts):
        self.opts = [o for o in opts if o.param_groups]
        self.param_groups = [g for o in self.opts for g in o.param_groups]

    def zero_grad(self, set_to_none=True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.opts:
            o.step()


def make_optimizer(policy, lr, kind):
    """AdamW, or Muon (torch.optim.Muon, update RMS matched to AdamW's) on the decoder layers' 2-D weights with
    AdamW on embeddings, norms and biases."""
    adamw = lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    if kind == "adamw":
        return adamw(list(policy.parameters()))
    hidden = [p for n, p in policy.named_parameters() if p.ndim == 2 and ".layers." in n]
    rest = [p for n, p in policy.named_parameters() if not (p.ndim == 2 and ".layers." in n)]
    return Optimizers(torch.optim.Muon(hidden, lr=lr, weight_decay=0.01, adjust_lr_fn="match_rms_adamw"), adamw(rest))


def set_lr(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr


def lm_step(policy, opt, seqs, weights, amp):
    """One optimizer step of the weighted language-model loss: weights[k][j] weighs predicting seqs[k][j + 1]."""
    with amp:
        logp, _ = M.score(policy, [s[:1] for s in seqs], [s[1:] for s in seqs])
    w = torch.zeros_like(logp)
    for k, wk in enumerate(weights):
        w[k, :len(wk)] = torch.tensor(wk)
    loss = -(logp * w).sum() / w.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    opt.step()
    return loss.item()


def training_data(cfg):
    """(train suite, demonstration triples, mining examples) of the settings cfg: everything the SFT learns from."""
    suite = envs.make(cfg["env"], "train", seed=cfg["seed"], **env_options(cfg))
    text_prompter = Prompter(None, suite.description, history=cfg["history"])
    skilled = bool(envs.module_attr(cfg["env"], "SKILLS"))
    rare = rare_keys(cfg) if skilled else ()
    triples = demonstrations(suite, cfg["demos"], cfg["seed"], text_prompter.text, cfg["noise"],
                             cfg["skill_frac"] if skilled else 0.0, rare, cfg["rare_plain"], cfg["rare_naive"],
                             cfg["wrong_frac"])
    mining = mining_examples(suite, round(cfg["mine_frac"] * cfg["demos"]), cfg["seed"]) if skilled else []
    return suite, triples, mining


SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "policies")  # policies/<env>/: built weights


def recipe(cfg, triples, mining):
    """A hash of the settings and of the training data they generate (demonstrations, mining examples): what a
    shipped policy records, so that a test (tests/test_shipped.py) can show it is what build() makes now."""
    h = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode())
    for x in list(triples) + list(mining):
        h.update(json.dumps(x).encode())
    return h.hexdigest()[:16]


def use_shipped(out, cfg, rec, key):
    """Copy the policy shipped in policies/<env>/ into `out` if it was built from this recipe; its path or None.
    (Built there by `python bootstrap.py --out policies/household --threads 1 --ship`.)"""
    src = os.path.join(SHIPPED, cfg["env"])
    meta = os.path.join(src, "bootstrap.json")
    if os.path.abspath(out) == os.path.abspath(src) or not os.path.exists(meta) or json.load(open(meta)).get("recipe") != rec:
        return None
    shutil.rmtree(out + ".tmp", ignore_errors=True)
    shutil.copytree(src, out + ".tmp")
    with open(os.path.join(out + ".tmp", "bootstrap.json"), "w") as f:
        json.dump({**json.load(open(meta)), "key": key}, f, indent=2)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(out + ".tmp", out)
    return src


def build(out, quiet=False, **kw):
    """Build (or reuse) the embedded policy in `out`; returns the checkpoint directory."""
    cfg = settings(**kw)
    mod = envs.module(cfg["env"])
    skilled = bool(envs.module_attr(cfg["env"], "SKILLS"))  # an env with reference skills
    if not skilled:  # (built or reused: said every time)
        warnings.warn(f"env {cfg['env']!r} declares no reference skills (SKILLS in {mod.__name__}): the embedded "
                      "policy is built without skill blocks and mining examples, so it can neither read nor write "
                      "skills and SIRI cannot mine with it; use --algo gigpo, or --model / --miner", stacklevel=2)
    with open(mod.__file__, "rb") as f:  # the env module's source: editing its expert or skills rebuilds
        key = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode() + f.read()).hexdigest()[:12]
    meta_path = os.path.join(out, "bootstrap.json")
    if os.path.exists(meta_path) and json.load(open(meta_path)).get("key") == key:
        return out
    log = (lambda *a: None) if quiet else (lambda *a: print("[bootstrap]", *a, flush=True))
    t0 = time.time()
    torch.manual_seed(cfg["seed"])
    suite, triples, mining = training_data(cfg)
    log(f"{len(triples)} expert steps from {cfg['demos']} episodes "
        f"({sum(s is not None for _, s, _ in triples)} with a skill block); {len(mining)} mining examples")
    rec = recipe(cfg, triples, mining)
    if shipped := use_shipped(out, cfg, rec, key):
        log(f"the settings and data of the policy shipped in {shipped}: copied, not rebuilt -> {out}")
        return out

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    corpus = ([p.replace(SKILL_MARK, s or "") for p, s, _ in triples] + [f"<action>{a}</action>" for _, _, a in triples]
              + [p + "\n" + a for p, a in mining])
    entities = getattr(mod, "entity_tokens", None)  # whole-string tokens (shop: ASINs), else numbered entities
    split = ENTITY_SPLIT if cfg["entity_tokens"] and not entities else WORD_SPLIT
    train_tokenizer(corpus, cfg["vocab"], tmp, split, entities(suite.tasks) if cfg["entity_tokens"] and entities else [])
    with open(os.path.join(tmp, "config.json"), "w") as f:  # so AutoTokenizer resolves it as it will later
        json.dump(M.config_dict(ARCH), f)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tmp)
    prompter = Prompter(tok, suite.description, history=cfg["history"])
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    data = [(prompter.render(p, s), enc(f"<action>{a}</action>") + [eos]) for p, s, a in triples]
    data += [(chat_ids(tok, p), enc(a) + [eos]) for p, a in mining]
    log(f"tokenizer: {len(tok)} tokens; mean prompt {sum(len(p) for p, _ in data) / len(data):.0f} tokens")

    hf = M.config_dict(ARCH, vocab_size=len(tok), hidden_size=cfg["hidden"], intermediate_size=cfg["intermediate"],
                       num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                       num_key_value_heads=cfg["kv_heads"], max_position_embeddings=2048,
                       eos_token_id=eos, bos_token_id=None, pad_token_id=tok.pad_token_id)
    policy = M.init_weights(M.Transformer(M.ModelConfig.from_hf(hf)), seed=cfg["seed"])
    n_params = sum(p.numel() for p in policy.parameters())
    opt = make_optimizer(policy, cfg["lr"], cfg["optimizer"])
    g = random.Random(cfg["seed"])
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(cfg["amp"]))
    policy.train()
    for step in range(cfg["sft_steps"]):
        set_lr(opt, cfg["lr"] * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg["sft_steps"]))))
        batch = g.sample(data, min(cfg["batch"], len(data)))
        # the language-model loss on the prompt tokens too (weight prompt_loss): far more signal per sample than
        # the ~12 action tokens, and full of copying (lists, history) to learn from
        loss = lm_step(policy, opt, [p + r for p, r in batch],
                       [[cfg["prompt_loss"]] * (len(p) - 1) + [1.0] * len(r) for p, r in batch], amp)
        if step % 50 == 0 or step == cfg["sft_steps"] - 1:
            log(f"sft step {step:4d} loss {loss:.4f} lr {opt.param_groups[0]['lr']:.2e} ({time.time() - t0:.0f} s)")
    policy.eval()
    M.save(policy, tmp)
    json.dump(dict(key=key, recipe=rec, settings=cfg, params=n_params, demo_steps=len(triples), mining_examples=len(mining), build_s=time.time() - t0),
              open(os.path.join(tmp, "bootstrap.json"), "w"), indent=2)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log(f"built {n_params / 1e6:.2f}M-parameter policy in {time.time() - t0:.0f} s -> {out}")
    return out


def imitation_accuracy(policy, tok, prompter, suite, n_episodes=40, seed=1):
    """Greedy exact-match accuracy on the expert's actions of n held-out episodes (no noise), per verb."""
    from rollout import project
    triples = demonstrations(suite, n_episodes, seed, prompter.text, noise=0.0)
    out = M.generate(policy, [prompter.render(p) for p, _, _ in triples], 24, temperature=0).lists()
    by_verb = {}
    for (_, _, a), r in zip(triples, out):
        by_verb.setdefault(a.split()[0], []).append(project(tok.decode(r, skip_special_tokens=True))[0] == a)
    hits = [h for v in by_verb.values() for h in v]
    return sum(hits) / len(hits), {k: round(sum(v) / len(v), 3) for k, v in sorted(by_verb.items())}


def skill_following(policy, tok, prompter, suite, temperature=0.4, max_steps=0):
    """Success per task type with the plain prompt, a correct skill block (the reference skill of the task's
    skill key) and a wrong one (the reference skill of another key, the env's WRONG_SKILL; a key without one
    gets the plain prompt there; no such row for an env without WRONG_SKILL)."""
    skills, wrong = envs.module_attr(suite.name, "SKILLS"), envs.module_attr(suite.name, "WRONG_SKILL")
    if not skills:
        raise ValueError(f"env {suite.name!r} declares no reference skills (SKILLS): nothing to follow")
    block = lambda key: R.format_skill(reference_skill(key, env=suite.name)) if key in skills else None
    rows = {}
    for name, fn in (("plain", None), ("correct", lambda t: block(envs.skill_key(t))),
                     ("wrong", lambda t: block(wrong.get(envs.skill_key(t))))):
        if name == "wrong" and not wrong:
            continue
        r = R.evaluate(policy, tok, prompter, suite, temperature=temperature, max_steps=max_steps, skill_of=fn)
        rows[name] = dict(r["by_type"], all=r["success"])
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/policy", help="checkpoint directory to build (or reuse)")
    helps = dict(env="environment (envs.REGISTRY)", seed="seed for demonstrations, tokenizer, init and batches",
                 demos="expert episodes to imitate", noise="probability of a random (untrained) action per demo step",
                 vocab="BPE vocabulary cap", hidden="model width", layers="decoder layers", heads="attention heads",
                 kv_heads="key/value heads (GQA)", intermediate="MLP width", sft_steps="supervised steps",
                 optimizer="muon (hidden matrices; AdamW for the rest) or adamw",
                 batch="samples per supervised step", lr="peak learning rate (warm-up 30 steps, cosine to 10%%)",
                 prompt_loss="weight of the LM loss on prompt tokens (action tokens weigh 1)",
                 history="past (observation, action) pairs in the prompt, as in RL", room_size="household room size",
                 amp="1 = bfloat16 autocast for the supervised steps (CPU AMX / CUDA), 0 = float32",
                 skill_frac="fraction of demo episodes with a correct skill block in the prompt",
                 rare="skill keys (task types) the plain demos mostly lack, comma-separated: keys of the env's SKILLS "
                      "or its short names (household: heat, cool, clean, look, pick, two)",
                 rare_plain="fraction of plain demo episodes of rare types kept",
                 rare_naive="fraction of the kept plain episodes of rare types played by the naive demonstrator",
                 wrong_frac="fraction of skill episodes carrying another type's skill (played as without a skill)",
                 mine_frac="mining examples (trajectory -> skill) per demo episode",
                 entity_tokens="1 = each numbered entity ('apple 1'; shop: each product's ASIN) is one token; 0 = "
                               "word and number are separate tokens")
    for k, v in DEFAULTS.items():
        by_env = "".join(f"; {name} {d[k]}" for name, d in ENV_DEFAULTS.items() if k in d)
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"{helps[k]} (default {v}{by_env})",
                       **({"choices": sorted(envs.REGISTRY)} if k == "env" else {}))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--eval-tasks", type=int, default=200, help="held-out tasks per split to evaluate the policy on")
    p.add_argument("--eval-max-steps", type=int, default=0, help="episode step cap in evaluation (0 = the env's)")
    p.add_argument("--skills", action="store_true",
                   help="measure skill following instead (success per task type with the plain prompt, a "
                        "correct skill block and a wrong one; per split and both splits pooled)")
    a = vars(p.parse_args())
    out, n_eval, cap, skills = a.pop("out"), a.pop("eval_tasks"), a.pop("eval_max_steps"), a.pop("skills")
    if threads := a.pop("threads"):
        torch.set_num_threads(threads)
    a = settings(**{k: v for k, v in a.items() if v is not None})
    if skills and not envs.module_attr(a["env"], "SKILLS"):
        raise SystemExit(f"--skills: env {a['env']!r} declares no reference skills (SKILLS) to follow")
    try:
        rare_keys(a)
    except ValueError as e:
        raise SystemExit(str(e))
    path = build(out, **a)
    from transformers import AutoTokenizer
    policy, tok = M.load(path), AutoTokenizer.from_pretrained(path)
    env_kw = env_options(a)
    pooled = {}
    for split in ("eval_seen", "eval_unseen"):
        suite = envs.make(a["env"], split, n_tasks=n_eval, seed=a["seed"], **env_kw)
        prompter = Prompter(tok, suite.description, history=a["history"])
        if skills:
            rows = skill_following(policy, tok, prompter, suite, max_steps=cap)
            print_skill_table(f"{split} skill following (success, {n_eval} tasks)", rows)
            env = suite.new_env()
            types = [env.reset(task).task_type for task in suite.tasks]
            for name, row in rows.items():  # success counts per type, to pool the two splits
                for t, v in row.items():
                    n = types.count(t) if t != "all" else len(types)
                    k, m = pooled.setdefault(name, {}).get(t, (0.0, 0))
                    pooled[name][t] = (k + v * n, m + n)
            continue
        acc, by_verb = imitation_accuracy(policy, tok, prompter, suite)
        r = R.evaluate(policy, tok, prompter, suite, max_steps=cap)
        r1 = R.evaluate(policy, tok, prompter, suite, max_steps=cap, temperature=1.0)
        print(f"{split}: success {r['success']:.3f} (at temperature 1.0: {r1['success']:.3f}) score {r['score']:.3f} by type {r['by_type']}; "
              f"expert-action accuracy {acc:.3f} by verb {by_verb}", flush=True)
    if pooled:
        n = {t: m for t, (_, m) in pooled["plain"].items()}
        print_skill_table("both splits pooled (tasks per type: " + ", ".join(f"{t} {m}" for t, m in n.items()) + ")",
                          {name: {t: k / m for t, (k, m) in row.items()} for name, row in pooled.items()})


def print_skill_table(title, rows):
    types = sorted(t for t in rows["plain"] if t != "all") + ["all"]
    print(f"{title}:\n| prompt | " + " | ".join(types) + " |\n|---|" + "---:|" * len(types))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[t]:.3f}" for t in types) + " |", flush=True)


if __name__ == "__main__":
    main()
