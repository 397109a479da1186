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
2. skills: 40% of episodes carry a correct skill block (a skill's three
   fields, phrasings drawn at random); household: half of those use a
   target-first variant that the expert then follows, so the block must be
   read to act right. Plain episodes of the rare task types (household: heat,
   cool; shop: the grocery and home categories) are mostly left out: the plain
   policy lacks what skills supply. Mining examples (a won trajectory in
   mine.py's mining prompt -> the three-line skill) teach the policy to write
   skills;
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
checkpoint directory (model + tokenizer), rebuilt only if the settings change.

    python bootstrap.py --out runs/policy            # build (or reuse), evaluate on held-out tasks
    python bootstrap.py --out runs/policy --skills   # measure skill following instead
"""

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import time

import torch

import envs
import mine
import model as M
import rollout as R
from envs.shop import get_catalog
from rollout import SKILL_MARK, Prompter, chat_ids

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DEFAULTS = dict(env="household", seed=0, demos=600, noise=0.25, vocab=4096, hidden=192, layers=4, heads=4, kv_heads=2,
                intermediate=512, sft_steps=450, optimizer="muon", batch=16, lr=3e-3, prompt_loss=1.0, history=2, room_size="small", amp=1,
                skill_frac=0.5, rare="heat,cool", rare_plain=1.0, rare_naive=0.7, wrong_frac=0.25, mine_frac=0.2,
                entity_tokens=0)
# shop: pages are long (one step of history keeps prompts near 450 tokens), products are picked by ASIN, and
# copying the query and ASINs needs more data and steps (450 steps on 600 demos: 0% success; these: 13% seen).
# Skills as in the household: the plain demos mostly lack two categories, which skill-guided demos cover.
ENV_DEFAULTS = {"shop": dict(history=1, entity_tokens=1, demos=1200, sft_steps=1000, noise=0.15, rare="grocery,home",
                             rare_plain=0.2, rare_naive=0.0, wrong_frac=0.0, skill_frac=0.4)}


# Reference skills (a skill's three fields) per household task type: what a good miner writes. Each field has
# phrasings to draw from, so that reading a skill is learned as language, not as one fixed string.
_PROCESS = dict(pick_clean_then_place_in_recep=("clean", "cleaned", "sinkbasin"),
                pick_heat_then_place_in_recep=("heat", "hot", "microwave"),
                pick_cool_then_place_in_recep=("cool", "cool", "fridge"))
SEARCH = "search for the object"


def _skill_table():
    t = {"pick_and_place_simple": dict(
            when=["The task asks you to put an object in or on a receptacle.",
                  "Use this when one object has to be moved into or onto a receptacle."],
            strategy=["Search the places that can hold the object, take it, then carry it to the target receptacle.",
                      "Look for the object one receptacle at a time; once you hold it, go to the target and put it there."],
            steps=[f"{SEARCH} | take it | go to the target | put it in/on the target"]),
         "look_at_obj_in_light": dict(
            when=["The task asks you to look at or examine an object under the desklamp.",
                  "Use this when an object must be examined in the light of the desklamp."],
            strategy=["Find and take the object, then go to the receptacle where the desklamp stands and turn it on.",
                      "Hold the object first; the task is done when you use the desklamp while holding it."],
            steps=[f"{SEARCH} | take it | go to the desklamp | use the desklamp"]),
         "pick_two_obj_and_place": dict(
            when=["The task asks you to put two objects of the same kind in a receptacle.",
                  "Use this when two objects of one kind must end up in the same receptacle."],
            strategy=["Move them one at a time: put the first in the target, then search for the second.",
                      "You can carry one object only, so bring the first to the target before fetching the second."],
            steps=["find and take the first object | put it in/on the target | find and take the second object | "
                   "go to the target | put it in/on the target"])}
    for ttype, (verb, adj, app) in _PROCESS.items():
        t[ttype] = dict(
            when=[f"The task asks for a {adj} object to be put in a receptacle.",
                  f"Use this when an object must be {adj if verb != 'heat' else 'heated'} before it is placed."],
            strategy=[f"Find and take the object, {verb} it with the {app}, then bring it to the target.",
                      f"The {app} does the work: carry the object there and {verb} it, then place it."],
            steps=[f"{SEARCH} | take the object | go to {app} | {verb} the object with {app} | "
                   "go to the target and put the object in/on it"])
    for cat, opts in _SHOP_OPTIONS.items():  # shop: one skill per product category (the task type)
        t[cat] = dict(
            when=[f"The task asks you to buy a {cat} product with some attributes, options and a price limit.",
                  f"Use this when shopping for a {cat} item with a required {opts}."],
            strategy=["Search for the product words of the instruction, open the first result, then click the options "
                      "it names and buy.",
                      f"Copy the product phrase into the search, open the top result and click the {opts} the "
                      "instruction asks for before you buy."],
            steps=["search the product phrase | click the first result | click each option the instruction names | "
                   "click buy now"])
    return t


_SHOP_OPTIONS = {"beauty": "size and scent or color", "clothing": "color and size", "electronics": "color, length or style",
                 "grocery": "flavor and size", "home": "color and size"}
SKILLS = _skill_table()
TARGET_FIRST = {"look_at_obj_in_light": ("Turn on the desklamp first.", "go to the desklamp and use it first"),
                None: ("Open the target first.", "go to the target first and open it")}


def reference_skill(task_type, rng=None, target_first=False):
    """A correct skill dict for a household task type (phrasings drawn with rng; first ones without).
    target_first: the variant whose procedure visits the target (or the desklamp) before searching."""
    pick = (lambda xs: rng.choice(xs)) if rng else (lambda xs: xs[0])
    s = {k: pick(v) for k, v in SKILLS[task_type].items()}
    if target_first:
        strategy, step = TARGET_FIRST.get(task_type, TARGET_FIRST[None])
        steps = s["steps"].split(" | ")
        s["strategy"] = strategy + " " + s["strategy"]
        s["steps"] = " | ".join([step] + steps[:2] + [" and ".join(steps[2:])])
    return s


def _target_first_actions(env):
    """The opening moves of the target-first variant, from the env's true state."""
    if env.task_type == "look_at_obj_in_light":
        r = next(r for r, c in enumerate(env.contents) if env.lamp in c)
        return [env.goto[r], "use " + env.onames[env.lamp]]
    r = env.goal_recs[0]
    return [env.goto[r]] + (["open " + env.rnames[r]] if env.openable[r] else [])


def _task_type(task):
    return getattr(task, "task_type", None) or task.category  # household tasks / shop tasks


def naive_action(env):
    """What a demonstrator that does not know the task type's procedure plays: the expert of the simple
    pick-and-place task (household: take the object to the target, skipping the heat / cool step)."""
    if not hasattr(env, "task_type") or env.task_type not in HOUSEHOLD_TYPES:
        return env.expert_action(observable=True)
    true_type, env.task_type = env.task_type, NAIVE_TYPE
    try:
        return env.expert_action(observable=True)
    finally:
        env.task_type = true_type


def demonstrations(suite, n, seed, prompter_text, noise=0.25, skill_frac=0.0, rare=(), rare_plain=1.0,
                   rare_naive=0.0, wrong_frac=0.0):
    """(user message, skill block or None, action) triples from expert episodes on n tasks of a shuffled train split.

    With probability `noise` a step plays a random admissible action instead (not a training pair), so the
    demonstrations also show states off the expert's path, "Nothing happens." included, and the way back.
    A fraction `skill_frac` of episodes carry a skill block for their task type; half of those use the
    target-first variant and the expert follows it, so the block must be read to act right.

    The `rare` task types stand for procedures the policy's pre-training lacks (docs/algorithm.md, "The embedded
    policy"): their plain episodes are kept with probability `rare_plain`, and a fraction `rare_naive` of those
    kept is played by the naive demonstrator (naive_action), which does not know the procedure and fails. A
    fraction `wrong_frac` of skill episodes carry another type's skill (WRONG_SKILL) instead: the expert then
    plays on as without a skill, naively for a rare type. So the only reliable way to the procedure of a rare
    type is the correct skill in the prompt."""
    rng = random.Random(seed)
    tasks = list(suite.tasks)
    rng.shuffle(tasks)
    env, triples, played = suite.new_env(), [], 0
    for task in tasks:
        if played == n:
            break
        skill, ttype, first, naive = None, _task_type(task), False, False
        if rng.random() < skill_frac:
            if rng.random() < wrong_frac and ttype in WRONG_SKILL:
                skill, naive = R.format_skill(reference_skill(WRONG_SKILL[ttype], rng)), ttype in rare
            else:
                first = rng.random() < 0.5 and ttype in HOUSEHOLD_TYPES  # the shop's procedure has no variant
                skill = R.format_skill(reference_skill(ttype, rng, first))
        elif rare and ttype in rare:
            if rng.random() >= rare_plain:
                continue
            naive = rng.random() < rare_naive
        played += 1
        obs, past, done, t = env.reset(task), [], False, 0
        prefix = _target_first_actions(env) if first else []
        while not done:
            if prefix:
                a = prefix.pop(0)
            else:
                a = naive_action(env) if naive else env.expert_action(observable=True)  # what the prompt shows
            if not prefix and rng.random() < noise:
                a = rng.choice(obs.admissible) if rng.random() < 0.8 else rng.choice(["look", "go to moon 1", "help"])
                if a.startswith("search[") and a.endswith("<your query>]"):
                    a = "search[" + " ".join(rng.sample(obs.task.split(), 3)) + "]"
            else:
                triples.append((prompter_text(obs.task, t, past, obs.text, obs.admissible), skill, a))
            past.append((obs.text, a))
            obs, r, done, info = env.step(a)
            t += 1
            if naive and a.startswith(f"put {env.goal} "):  # the naive demonstrator believes it is done
                break
    return triples


def mining_examples(suite, n, seed):
    """(mining prompt, three-line skill) pairs: the noise-free expert's actions on n won train tasks and the
    reference skill of the task type, so that the policy can write skills from its own successes. (The shop's
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
                    mine.skill_text(reference_skill(_task_type(task), rng))))
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


HOUSEHOLD_RARE = {"heat": "pick_heat_then_place_in_recep", "cool": "pick_cool_then_place_in_recep",
                  "clean": "pick_clean_then_place_in_recep", "look": "look_at_obj_in_light",
                  "pick": "pick_and_place_simple", "two": "pick_two_obj_and_place"}
HOUSEHOLD_TYPES = set(HOUSEHOLD_RARE.values())
NAIVE_TYPE = "pick_and_place_simple"  # the procedure the naive demonstrator plays for every type


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


def build(out, quiet=False, **kw):
    """Build (or reuse) the embedded policy in `out`; returns the checkpoint directory."""
    cfg = {**DEFAULTS, **ENV_DEFAULTS.get(kw.get("env", DEFAULTS["env"]), {}), **kw}
    key = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    meta_path = os.path.join(out, "bootstrap.json")
    if os.path.exists(meta_path) and json.load(open(meta_path)).get("key") == key:
        return out
    log = (lambda *a: None) if quiet else (lambda *a: print("[bootstrap]", *a, flush=True))
    t0 = time.time()
    torch.manual_seed(cfg["seed"])
    env_kw = {"room_size": cfg["room_size"]} if cfg["env"] == "household" else {}
    suite = envs.make(cfg["env"], "train", seed=cfg["seed"], **env_kw)
    text_prompter = Prompter(None, suite.description, history=cfg["history"])
    household = cfg["env"] == "household"
    skilled = cfg["env"] in ("household", "shop")  # the envs with reference skills (SKILLS)
    rare = tuple(HOUSEHOLD_RARE.get(r, r) for r in cfg["rare"].split(",") if r) if skilled else ()
    triples = demonstrations(suite, cfg["demos"], cfg["seed"], text_prompter.text, cfg["noise"],
                             cfg["skill_frac"] if skilled else 0.0, rare, cfg["rare_plain"], cfg["rare_naive"],
                             cfg["wrong_frac"])
    mining = mining_examples(suite, round(cfg["mine_frac"] * cfg["demos"]), cfg["seed"]) if skilled else []
    log(f"{len(triples)} expert steps from {cfg['demos']} episodes "
        f"({sum(s is not None for _, s, _ in triples)} with a skill block); {len(mining)} mining examples")

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    corpus = ([p.replace(SKILL_MARK, s or "") for p, s, _ in triples] + [f"<action>{a}</action>" for _, _, a in triples]
              + [p + "\n" + a for p, a in mining])
    asins = ([p.asin.lower() for p in get_catalog(suite.tasks[0].catalog).products]
             if cfg["entity_tokens"] and cfg["env"] == "shop" else [])
    train_tokenizer(corpus, cfg["vocab"], tmp, ENTITY_SPLIT if cfg["entity_tokens"] and household else WORD_SPLIT, asins)
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
    json.dump(dict(key=key, settings=cfg, params=n_params, demo_steps=len(triples), mining_examples=len(mining), build_s=time.time() - t0),
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


WRONG_SKILL = {"pick_heat_then_place_in_recep": "pick_cool_then_place_in_recep",
               "pick_cool_then_place_in_recep": "pick_heat_then_place_in_recep",
               "pick_clean_then_place_in_recep": "pick_heat_then_place_in_recep",
               "pick_and_place_simple": "look_at_obj_in_light", "look_at_obj_in_light": "pick_and_place_simple",
               "pick_two_obj_and_place": "pick_and_place_simple",
               "beauty": "home", "clothing": "electronics", "electronics": "grocery", "grocery": "clothing",
               "home": "beauty"}


def skill_following(policy, tok, prompter, suite, temperature=0.4, max_steps=0):
    """Success per task type with the plain prompt, a correct skill block (the reference skill of the task's
    type) and a wrong one (the reference skill of another type, WRONG_SKILL)."""
    rows = {}
    for name, fn in (("plain", None), ("correct", lambda t: R.format_skill(reference_skill(_task_type(t)))),
                     ("wrong", lambda t: R.format_skill(reference_skill(WRONG_SKILL[_task_type(t)])))):
        r = R.evaluate(policy, tok, prompter, suite, temperature=temperature, max_steps=max_steps, skill_of=fn)
        rows[name] = dict(r["by_type"], all=r["success"])
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/policy", help="checkpoint directory to build (or reuse)")
    helps = dict(env="built-in environment", seed="seed for demonstrations, tokenizer, init and batches",
                 demos="expert episodes to imitate", noise="probability of a random (untrained) action per demo step",
                 vocab="BPE vocabulary cap", hidden="model width", layers="decoder layers", heads="attention heads",
                 kv_heads="key/value heads (GQA)", intermediate="MLP width", sft_steps="supervised steps",
                 optimizer="muon (hidden matrices; AdamW for the rest) or adamw",
                 batch="samples per supervised step", lr="peak learning rate (warm-up 30 steps, cosine to 10%%)",
                 prompt_loss="weight of the LM loss on prompt tokens (action tokens weigh 1)",
                 history="past (observation, action) pairs in the prompt, as in RL", room_size="household room size",
                 amp="1 = bfloat16 autocast for the supervised steps (CPU AMX / CUDA), 0 = float32",
                 skill_frac="fraction of demo episodes with a correct skill block in the prompt",
                 rare="task types the plain demos mostly lack, comma-separated (household: heat, cool, clean, look, "
                      "pick, two; shop: beauty, clothing, electronics, grocery, home)",
                 rare_plain="fraction of plain demo episodes of rare types kept",
                 rare_naive="fraction of the kept plain episodes of rare types played by the naive demonstrator",
                 wrong_frac="fraction of skill episodes carrying another type's skill (played as without a skill)",
                 mine_frac="mining examples (trajectory -> skill) per demo episode",
                 entity_tokens="1 = each numbered entity ('apple 1'; shop: each product's ASIN) is one token; 0 = "
                               "word and number are separate tokens")
    for k, v in DEFAULTS.items():
        shop = ENV_DEFAULTS["shop"].get(k)
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=None,
                       help=f"{helps[k]} (default {v}" + (f"; shop {shop})" if shop is not None else ")"))
    p.add_argument("--eval-tasks", type=int, default=200, help="held-out tasks per split to evaluate the policy on")
    p.add_argument("--eval-max-steps", type=int, default=0, help="episode step cap in evaluation (0 = the env's)")
    p.add_argument("--skills", action="store_true",
                   help="measure skill following instead (success per task type with the plain prompt, a "
                        "correct skill block and a wrong one; per split and both splits pooled)")
    a = vars(p.parse_args())
    out, n_eval, cap, skills = a.pop("out"), a.pop("eval_tasks"), a.pop("eval_max_steps"), a.pop("skills")
    a = {**DEFAULTS, **ENV_DEFAULTS.get(a["env"] or DEFAULTS["env"], {}), **{k: v for k, v in a.items() if v is not None}}
    path = build(out, **a)
    from transformers import AutoTokenizer
    policy, tok = M.load(path), AutoTokenizer.from_pretrained(path)
    env_kw = {"room_size": a["room_size"]} if a["env"] == "household" else {}
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
