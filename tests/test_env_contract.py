"""The env contract (envs/__init__.py), checked on every registered env: a new env gets the whole check by being
registered. Nothing here names an env: each module's own conventions (NOTHING, MAX_STEPS, FLAGS, its skill
tables) say what to expect. An env whose engine is not installed (alfworld without textworld) is skipped.

CPU; a few seconds per env (alfworld: its engine's resets dominate)."""

import json
import pickle
import random
import sys
import types
from dataclasses import asdict, is_dataclass

import pytest

import bootstrap
import envs
import mine
import train

NAMES = sorted(envs.REGISTRY)
N = 3  # tasks per split (the rules, not the expert's quality: tests/test_envs.py plays 200 per split)
BAD = ["", "   ", "x" * 10_000, "ünïcødé 🚀 行动 \u200b", "go to", "click[", "search[]", "click[b0nonexist]", "[SEP]",
       "look", "click[buy now]", "click[buy now",
       "take unicorn 1 from countertop 1", "put apple 1 in/on moon 1", "go to the moon", "\n\n", None, 42]


def suite(name, split="train", n=N, seed=0):
    try:
        s = envs.make(name, split, n_tasks=n, seed=seed)
        s.new_env().reset(s.tasks[0])
    except ImportError as e:  # an env whose engine is optional and not installed
        pytest.skip(f"{name}: {e}")
    return s


def fits(action, admissible):
    """Admissible as it stands, or an admissible template ("search[<your query>]") filled in."""
    return action in admissible or any(
        envs.TEMPLATE.search(t) and action.startswith(t[:envs.TEMPLATE.search(t).start()])
        and action.endswith(t[envs.TEMPLATE.search(t).end():]) for t in admissible)


def random_action(rng, obs):
    """A uniformly random admissible action, templates filled with words of the task."""
    a = rng.choice(obs.admissible)
    return envs.TEMPLATE.sub(lambda m: " ".join(obs.task.split()[:4]), a)


def play(env, obs, act, cap):
    """Play act(env, obs) until done; every action must fit the admissible list. -> last info."""
    done, info = False, None
    for _ in range(cap):
        a = act(env, obs)
        assert fits(a, obs.admissible), f"{a!r} not admissible in {obs.admissible}"
        obs, r, done, info = env.step(a)
        if done:
            break
    assert done
    return info


@pytest.mark.parametrize("name", NAMES)
def test_module_declares_the_contract(name):
    """The module has the required attributes with the right types; its optional tables are consistent: every
    reference skill (each phrasing) parses as a mined skill would, the wrong-skill map and short names point at
    keys that have skills, its bootstrap settings are bootstrap.py's, and FLAGS names train.py flags."""
    suite(name, n=1)
    mod = envs.module(name)
    assert callable(mod.make_tasks) and isinstance(mod.Env, type)
    assert isinstance(mod.DESCRIPTION, str) and mod.DESCRIPTION and isinstance(mod.MAX_STEPS, int) and mod.MAX_STEPS > 0
    assert set(mod.DEFAULT_N_TASKS) == set(envs.SPLITS)
    nothing = envs.module_attr(name, "NOTHING")
    assert nothing is None or (isinstance(nothing, str) and nothing)
    flags = vars(train.get_args([]))
    assert all(f in flags for f in envs.module_attr(name, "FLAGS").values())
    skills = envs.module_attr(name, "SKILLS")
    for key, table in skills.items():
        assert list(table) == ["when", "strategy", "steps"] and all(isinstance(v, list) and v for v in table.values())
        for k in range(max(map(len, table.values()))):
            s = {f: v[min(k, len(v) - 1)] for f, v in table.items()}
            assert mine.parse_skill(mine.skill_text(s)) == s, (key, s)
    wrong = envs.module_attr(name, "WRONG_SKILL")
    assert all(k in skills and v in skills and k != v for k, v in wrong.items())
    assert set(envs.module_attr(name, "TYPE_NAMES").values()) <= set(skills)
    settings = envs.module_attr(name, "BOOTSTRAP")
    assert set(settings) <= set(bootstrap.DEFAULTS) and set(envs.module_attr(name, "BOOTSTRAP_OPTIONS")) <= set(
        bootstrap.DEFAULTS)
    cfg = bootstrap.settings(env=name)
    assert set(bootstrap.rare_keys(cfg)) <= set(skills)
    assert envs.make(name, "train", n_tasks=1, **bootstrap.env_options(cfg)).tasks  # make_tasks takes them


@pytest.mark.parametrize("name", NAMES)
def test_tasks_deterministic_typed_and_serialisable(name):
    """Task i depends on (seed, split, i) only (n=k is a prefix of n=m; another seed gives other tasks); tasks are
    frozen dataclasses that survive pickle, and a JSON round trip with the same start state (e.g. shipped to a
    worker); each has a task_type
    (the observation's) and a skill key, which the env's reference skills cover if it declares any."""
    a, b = suite(name, n=N).tasks, suite(name, n=2 * N).tasks
    assert a == b[:N] and a != suite(name, n=N, seed=1).tasks
    skills = envs.module_attr(name, "SKILLS")
    env = suite(name, n=1).new_env()
    for split in envs.SPLITS:
        for t in suite(name, split).tasks:
            assert is_dataclass(t) and type(t).__dataclass_params__.frozen
            back = type(t)(**json.loads(json.dumps(asdict(t))))
            assert pickle.loads(pickle.dumps(t)) == t
            obs = env.reset(t)
            assert env.reset(back) == obs
            assert isinstance(t.task_type, str) and t.task_type and obs.task_type == t.task_type
            assert isinstance(envs.skill_key(t), str) and envs.skill_key(t)
            assert not skills or envs.skill_key(t) in skills, f"no reference skill for key {envs.skill_key(t)!r}"
            assert isinstance(obs.text, str) and obs.anchor and isinstance(obs.admissible, tuple) and obs.task


@pytest.mark.parametrize("name", NAMES)
def test_expert_wins_from_any_reachable_state(name):
    """The privileged expert wins every task of every split within the step cap with admissible actions, also
    when handed the episode after random actions (up to a third of the cap); the observable expert (what
    bootstrap.py imitates) replans from the same random states with admissible actions and wins some."""
    rng, handed, observable_wins = random.Random(0), 0, 0
    for split in envs.SPLITS:
        s = suite(name, split)
        env = s.new_env()
        for task in s.tasks:
            info = play(env, env.reset(task), lambda e, o: e.expert_action(), s.max_steps)
            assert info["won"] and info["steps"] <= s.max_steps, (task, info)
            for observable in (False, True):
                obs, done, k = env.reset(task), False, rng.randint(1, s.max_steps // 3)
                for _ in range(k):
                    obs, r, done, info = env.step(random_action(rng, obs))
                    if done:
                        break
                if done:
                    continue
                handed += not observable
                info = play(env, obs, lambda e, o: e.expert_action(observable=observable), s.max_steps)
                assert info["won"] or observable, (task, info)
                observable_wins += observable and info["won"]
    assert handed >= N and observable_wins > 0


@pytest.mark.parametrize("name", NAMES)
def test_bad_actions_change_nothing(name):
    """Empty, huge, unicode, malformed, non-string and inadmissible actions never raise: the state, the admissible
    list and the reward are unchanged, the step counts, and the answer is the module's NOTHING (None: the same
    observation again). The answer has no step counter: the same bad action twice gives the same anchor."""
    s, nothing = suite(name, n=1), envs.module_attr(name, "NOTHING")
    env = s.new_env()
    for k in (0, 2):  # at the start and from a mid-episode state
        t = s.max_steps  # steps taken: a fresh start before the cap could end the episode
        for a in BAD:
            if t + 2 >= s.max_steps:
                obs, t = env.reset(s.tasks[0]), k
                for _ in range(k):
                    obs = env.step(env.expert_action())[0]
                key = env.state_key()
            if a in obs.admissible:
                continue
            new, r, done, info = env.step(a)
            assert env.state_key() == key and info["steps"] == t + 1
            assert r == 0.0 and not done and not info["action_admissible"] and not info["won"]
            assert new.admissible == obs.admissible and new.task == obs.task
            assert new.text == (obs.text if nothing is None else nothing)
            assert env.step(a)[0].anchor == new.anchor
            t += 2


@pytest.mark.parametrize("name", NAMES)
def test_step_cap_info_and_done(name):
    """At MAX_STEPS an unfinished episode ends: done, truncated, not won, no reward, score 0 (or absent: rollout
    reads float(won)); info carries won, truncated, action_admissible and steps every step; a finished episode
    must be reset, not stepped."""
    s = suite(name, n=1)
    env = s.new_env()
    env.reset(s.tasks[0])
    for i in range(s.max_steps):
        obs, r, done, info = env.step("")
        assert {"won", "truncated", "action_admissible", "steps"} <= set(info) and info["steps"] == i + 1
        assert r == 0.0 and done == (i == s.max_steps - 1)
    assert info["truncated"] and not info["won"] and info.get("score", 0.0) == 0.0
    with pytest.raises(AssertionError):
        env.step("")
    env.reset(s.tasks[0])
    info = play(env, env.reset(s.tasks[0]), lambda e, o: e.expert_action(), s.max_steps)
    assert info["won"] and not info["truncated"] and info.get("score", 1.0) == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_groups_and_anchors(name):
    """GiGPO's group: N envs reset to one task start equal and stay equal under the same actions (anchor,
    admissible list, state key). The anchor holds no history and no step counter: an env that first wasted a
    step on a bad action and then played the expert's action shows the anchor of one that played it at once."""
    s = suite(name, n=3)
    for task in s.tasks:
        group = [s.new_env() for _ in range(3)]
        obs = [e.reset(task) for e in group]
        assert len(set(obs)) == 1 and len({e.state_key() for e in group}) == 1
        for _ in range(5):
            a = group[0].expert_action()
            outs = [e.step(a) for e in group]
            assert len({(o.anchor, o.admissible, r, d) for o, r, d, _ in outs}) == 1
            assert len({e.state_key() for e in group}) == 1
            if outs[0][2]:
                break
        late, now = s.new_env(), s.new_env()
        late.reset(task), now.reset(task)
        late.step("")
        a = now.expert_action()
        assert late.step(a)[0].anchor == now.step(a)[0].anchor and late.state_key() == now.state_key()


@pytest.mark.parametrize("name", NAMES)
def test_embedded_policy_data(name):
    """bootstrap.py's data: plain demonstrations (a quarter of the steps random, the expert replanning) record
    admissible actions only; with the env's SKILLS and skill_frac 1 every episode carries the reference skill of
    its key (or, at wrong_frac 1, its WRONG_SKILL's); mining examples pair a won trajectory with a reference
    skill."""
    s, skills = suite(name, n=30), envs.module_attr(name, "SKILLS")
    text = lambda task, t, past, obs, adm: (task, t, adm)
    plain = bootstrap.demonstrations(s, 4, 0, text, noise=0.25)
    assert plain and all(block is None and fits(a, adm) for (_, _, adm), block, a in plain)
    if not skills:
        return
    by_text = {s.new_env().reset(t).task: t for t in s.tasks}
    wrong = envs.module_attr(name, "WRONG_SKILL")
    for wrong_frac in (0.0, 1.0):
        triples = bootstrap.demonstrations(s, 6, 0, text, noise=0.0, skill_frac=1.0, wrong_frac=wrong_frac)
        assert triples
        for (task, t, adm), block, a in triples:
            key = envs.skill_key(by_text[task])
            shown = wrong.get(key, key) if wrong_frac else key
            assert any(f"When to apply: {w}\n" in block for w in skills[shown]["when"]) and fits(a, adm)
    for prompt, answer in bootstrap.mining_examples(s, 3, 0):
        skill = mine.parse_skill(answer)
        assert any(skill["steps"] in v["steps"] and skill["when"] in v["when"] for v in skills.values())
        assert s.description in prompt


def test_env_without_skills_warns_and_builds_without_skill_data(tmp_path, monkeypatch):
    """A registered env with no reference skills (SKILLS): bootstrap.build warns that SIRI cannot mine with the
    policy it builds (and again when it reuses it), and that policy saw no skill block and no mining example.
    Editing the env module's source rebuilds the policy; the same source reuses it."""
    base = envs.module("cafe")
    mod = types.ModuleType("plain_cafe")
    for attr in ("Env", "make_tasks", "DESCRIPTION", "MAX_STEPS", "DEFAULT_N_TASKS", "NOTHING"):
        setattr(mod, attr, getattr(base, attr))
    mod.__file__ = base.__file__
    monkeypatch.setitem(sys.modules, "plain_cafe", mod)
    monkeypatch.setitem(envs.REGISTRY, "plain_cafe", "plain_cafe")
    kw = dict(env="plain_cafe", demos=4, sft_steps=1, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64,
              batch=4, vocab=400)
    with pytest.warns(UserWarning, match="SIRI cannot mine"):
        out = bootstrap.build(str(tmp_path / "p"), quiet=True, **kw)
    meta = json.load(open(tmp_path / "p" / "bootstrap.json"))
    assert out == str(tmp_path / "p") and meta["mining_examples"] == 0 and meta["demo_steps"] > 0
    edited = tmp_path / "plain_cafe.py"  # the env module's source is part of the cache key
    edited.write_text(open(base.__file__).read() + "\n# an edit\n")
    for source, rebuilt in ((base.__file__, False), (str(edited), True)):
        mod.__file__ = source
        with pytest.warns(UserWarning, match="SIRI cannot mine"):  # also when the policy is reused
            bootstrap.build(out, quiet=True, **kw)
        assert (json.load(open(tmp_path / "p" / "bootstrap.json"))["key"] != meta["key"]) == rebuilt
