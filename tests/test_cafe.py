"""envs/cafe.py, the env written as a newcomer would (one file plus a registry line): its contract runs in
tests/test_env_contract.py like every registered env's; here its own conventions, a tiny embedded policy built
for it by bootstrap.py, and GiGPO and SIRI through train.main on it, end to end.

CPU; the policy builds in seconds, each train.main run takes seconds to a minute on 2 busy cores."""

import json
import os
import random
from collections import Counter
from dataclasses import replace

import pytest
from transformers import AutoTokenizer

import bootstrap
import envs
import mine
import model as M
import rollout as R
import train
from envs import cafe

TINY = dict(demos=24, sft_steps=3, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, batch=8, vocab=600)


def test_recipes_keys_and_revisited_states():
    """Skills are keyed by the drink (skill_key), finer than the task type (three types group nine recipes); the
    order's text names the drink, never its recipe; walking away and back, or emptying the cup, revisits a state
    with the same anchor; a wrong drink served ends the episode lost."""
    tasks = envs.make("cafe", "train", n_tasks=200).tasks
    assert {t.skill_key for t in tasks} == set(cafe.RECIPES) and {t.task_type for t in tasks} == {"coffee", "iced", "tea"}
    assert all(envs.skill_key(t) == t.skill_key != t.task_type for t in tasks)
    assert not any(ing in t.text for t in tasks for ing in ("espresso", "milk", "water", "ice ") if ing not in t.skill_key)
    env = envs.make("cafe", "train", n_tasks=1).new_env()
    task = next(t for t in tasks if t.skill_key == "latte")
    env.reset(task)
    first = env.step("go to the grinder")[0]
    env.step("go to the sink")
    assert env.step("go to the grinder")[0].anchor == first.anchor
    env.step("grind beans"), env.step("go to the espresso machine")
    shot = env.step("pull a shot")[0]
    assert "The cup holds espresso." in shot.text and "Ground coffee" not in shot.text
    key = env.state_key()
    env.step("go to the fridge"), env.step("add ice"), env.step("go to the sink")
    emptied = env.step("empty the cup")[0]
    assert emptied.text == "You empty the cup into the sink. You are at the sink. The cup is empty." and env.state_key() != key
    env.step("go to the counter")
    assert "serve the drink" not in env.admissible()  # nothing to serve
    env.step("go to the tea shelf"), env.step("add green tea"), env.step("go to the counter")
    obs, r, done, info = env.step("serve the drink")
    assert done and r == 0.0 and not info["won"] and "that is no latte" in obs.text and "score" not in info


def test_expert_follows_the_recipe_and_random_play_fails():
    """The expert's winning cup is exactly the recipe (a doppio pulls two shots, grinding before each), in recipe
    order, within 12 steps from any state; a random admissible agent almost never wins (< 5% of 300 orders)."""
    suite = envs.make("cafe", "eval_unseen", n_tasks=300)
    env, rng, wins = suite.new_env(), random.Random(0), 0
    for task in suite.tasks:
        env.reset(task)
        added = []
        while not env.done:
            a = env.expert_action()
            obs, r, done, info = env.step(a)
            if a.startswith(("pull", "add", "pour", "steam", "froth")):
                added.append(env.cup[-1])
        assert info["won"] and added == cafe.RECIPES[task.skill_key][1] and info["steps"] <= 12
        obs = env.reset(task)
        while not env.done:
            obs, r, done, info = env.step(rng.choice(obs.admissible))
        wins += info["won"]
    assert wins < 15
    doppio = envs.make("cafe", "train", n_tasks=300).tasks
    env.reset(next(t for t in doppio if t.skill_key == "doppio"))
    acts = []
    while not env.done:
        acts.append(env.expert_action())
        env.step(acts[-1])
    assert Counter(acts)["grind beans"] == Counter(acts)["pull a shot"] == 2


@pytest.fixture(scope="module")
def cafe_policy(tmp_path_factory):
    return bootstrap.build(str(tmp_path_factory.mktemp("cafe_policy")), quiet=True, env="cafe", **TINY)


def test_bootstrap_builds_a_policy_with_skill_data(cafe_policy):
    """bootstrap.build takes everything from envs/cafe.py: its reference skills (skill blocks in the demos and
    mining examples, so SIRI can mine), its rare drinks; the result loads and plays; the cache key covers the env
    module's source; --skills' measurement runs on it (plain, correct and wrong skill per task type)."""
    meta = json.load(open(os.path.join(cafe_policy, "bootstrap.json")))
    assert meta["settings"]["env"] == "cafe" and meta["settings"]["rare"] == cafe.BOOTSTRAP["rare"]
    assert meta["demo_steps"] > 24 and meta["mining_examples"] == round(0.2 * 24)
    policy, tok = M.load(cafe_policy), AutoTokenizer.from_pretrained(cafe_policy)
    suite = envs.make("cafe", "eval_seen", n_tasks=3)
    prompter = R.Prompter(tok, suite.description)
    rows = bootstrap.skill_following(policy, tok, prompter, suite, max_steps=2)
    assert set(rows) == {"plain", "correct", "wrong"} and all(set(r) >= {"all"} for r in rows.values())
    same = bootstrap.build(cafe_policy, quiet=True, env="cafe", **TINY)  # cached: same settings, same source
    assert same == cafe_policy and json.load(open(os.path.join(cafe_policy, "bootstrap.json")))["key"] == meta["key"]


def flags(policy, out, *extra):
    return ["--env", "cafe", "--model", policy, "--out", out, "--groups", "2", "--group-size", "2", "--iters", "2",
            "--max-steps", "3", "--max-new-tokens", "8", "--eval-tasks", "2", "--final-eval-tasks", "2",
            "--eval-max-steps", "3", "--keep-uniform-groups", "--lr", "1e-3", *extra]


def test_gigpo_end_to_end(cafe_policy, tmp_path):
    """train.main runs GiGPO on cafe: iterations logged, a checkpoint written, the final evaluation on both
    held-out splits by task type."""
    out = str(tmp_path / "gigpo")
    final = train.main(flags(cafe_policy, out, "--algo", "gigpo"))
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["iter"] for r in rows if "success" in r and not r.get("eval")] == [1, 2]
    assert all(r["samples"] > 0 for r in rows if "samples" in r)
    assert os.path.exists(os.path.join(out, "ckpt", "state.json"))
    assert final["eval_seen"]["n"] == final["eval_unseen"]["n"] == 2
    assert set(final["eval_seen"]["by_type"]) <= {"coffee", "iced", "tea"}


def test_siri_end_to_end_keys_skills_by_drink(cafe_policy, tmp_path, monkeypatch):
    """train.main runs SIRI on cafe through all three phases. The tiny policy never wins nor writes a parseable
    skill, so (as tests/test_siri.py does) every plain episode counts as won and the miner writes the reference
    skill of the trajectory's key. What this shows: the buffer, the bank and retrieval all use the env's skill
    key (the drink), not its task type, and paired validation puts those skills into half of each group."""
    real = mine.successes
    monkeypatch.setattr(mine, "successes", lambda steps, eps: real(steps, [replace(e, won=True) for e in eps]))
    monkeypatch.setattr(mine, "mine", lambda model, tok, desc, trajs, **kw:
                        ([(bootstrap.reference_skill(t.key, env="cafe"), t) for t in trajs], 0))
    keys = []
    retrieve = mine.SkillBank.retrieve
    monkeypatch.setattr(mine.SkillBank, "retrieve", lambda self, key, *a, **k: keys.append(key) or retrieve(self, key, *a, **k))
    out = str(tmp_path / "siri")
    train.main(flags(cafe_policy, out, "--algo", "siri", "--iters", "3", "--phase1-min-frac", "0",
                     "--phase2-frac", "0.34", "--n-req", "1", "--mine-every", "1"))
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    iters = [r for r in rows if "phase" in r and not r.get("eval") and "event" not in r]
    assert [r["phase"] for r in iters] == [0, 1, 2]
    bank = json.load(open(os.path.join(out, "ckpt", "bank.json")))
    assert bank["skills"] and {s["key"] for s in bank["skills"]} <= set(cafe.RECIPES)
    assert keys and set(keys) <= set(cafe.RECIPES)
    assert sum(r["skill_groups"] for r in iters) > 0
