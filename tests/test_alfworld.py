"""Tests of envs/alfworld.py: ALFWorld's own engine (textworld + alfworld) on games generated offline, the
official-data loader and its errors, and a GiGPO run on it end to end.

CPU, real engine, ~40 s (one game generates and loads in about half a second). Skipped only when textworld is
not installed (pip install 'textworld[pddl]==1.7.0' alfworld==0.4.2). Each test's docstring says what it proves.
"""

import json
import os
import re
import shutil
import sys

import pytest

pytest.importorskip("textworld", reason="ALFWorld's engine is not installed: pip install 'textworld[pddl]==1.7.0' alfworld==0.4.2")

import bootstrap  # noqa: E402
import envs  # noqa: E402
import rollout as R  # noqa: E402
from envs import alfworld as A  # noqa: E402
from envs import alfworld_gen as G  # noqa: E402
from alfworld.gen import goal_library  # noqa: E402

TINY = dict(demos=12, sft_steps=3, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, batch=8)


@pytest.fixture(scope="module")
def games(tmp_path_factory):
    return str(tmp_path_factory.mktemp("alfworld_games"))


@pytest.fixture(scope="module")
def one_of_each(games):
    """The first train task of each of the six types, and the first two eval_unseen tasks (generated on reset)."""
    train = envs.make("alfworld", "train", n_tasks=40, seed=0, data="", games=games)
    firsts = {}
    for t in train.tasks:
        firsts.setdefault(t.task_type, t)
    assert sorted(firsts) == sorted(G.TASK_TYPES), "40 planned tasks cover every task type"
    unseen = envs.make("alfworld", "eval_unseen", n_tasks=2, seed=0, data="", games=games)
    tasks = list(firsts.values()) + unseen.tasks
    env = train.new_env()
    for t in tasks:  # write the games now (each test may run alone)
        env.reset(t)
    env.close()
    return train, tasks


def play(env, obs, actions=None):
    """Play the planner (or a fixed action list) to the end; returns (rewards, last obs, last info)."""
    rewards, done, k = [], False, 0
    while not done:
        a = env.expert_action() if actions is None else actions[k]
        assert a in obs.admissible, (a, obs.admissible)
        obs, r, done, info = env.step(a)
        rewards.append(r)
        k += 1
    return rewards, obs, info


def test_planner_and_stored_walkthrough_win_every_task_type(one_of_each):
    """Every generated game (each task type, and held-out eval_unseen ones) is written in the official layout
    (game.tw-pddl solvable with a walkthrough, traj_data.json with the task type, initial_state.pddl), the
    planner expert wins it with admissible commands, and replaying the stored walkthrough wins too; the reward
    is 1.0 at the winning step only."""
    suite, tasks = one_of_each
    env = suite.new_env()
    for task in tasks:
        rewards, _, info = play(env, env.reset(task))
        assert info["won"] and info["score"] == 1.0 and not info["truncated"], (task, info)
        assert rewards[-1] == 1.0 and sum(rewards) == 1.0 and info["steps"] == len(rewards) <= 12
        d = os.path.dirname(task.gamefile)
        assert re.search(r"json_2\.1\.1/(train|valid_unseen)/" + task.task_type + r"-\w+-None-\w+-\d+/trial_0_\d{6}$", d)
        game = json.load(open(task.gamefile))
        assert game["solvable"] is True and game["walkthrough"] and "(:domain alfred)" in game["pddl_problem"]
        assert json.load(open(os.path.join(d, "traj_data.json")))["task_type"] == task.task_type
        assert open(os.path.join(d, "initial_state.pddl")).read() == game["pddl_problem"]
        rewards, _, info = play(env, env.reset(task), game["walkthrough"])
        assert info["won"] and rewards[-1] == 1.0 and len(rewards) == len(game["walkthrough"])


def test_observations_are_alfworld_text(one_of_each):
    """The first observation is the engine's room description + task without TextWorld's banner; anchor is the
    text; task / task_type match the game; admissible is the engine's sorted command list without 'help'; going
    to a receptacle reads as ALFWorld's grammar writes it."""
    suite, tasks = one_of_each
    env = suite.new_env()
    for task in tasks:
        obs = env.reset(task)
        assert obs.text.startswith("You are in the middle of a room. Looking quickly around you, you see a ")
        assert obs.text.endswith("\n\nYour task is to: " + task.text) and A.BANNER not in obs.text
        assert obs.anchor == obs.text and obs.task == task.text and obs.task_type == task.task_type
        templates = [t.format(obj=r"\w+", recep=r"\w+", toggle=r"\w+") + r"\."
                     for t in goal_library.gdict[task.task_type]["templates"]]
        assert any(re.fullmatch(t, task.text) for t in templates), task.text
        adm = obs.admissible
        assert "help" not in adm and list(adm) == sorted(adm) and {"inventory", "look"} <= set(adm)
        receps = re.findall(r"\ba (\w+ \d+)", obs.text.split("\n")[0])
        assert {"go to " + r for r in receps} <= set(adm) and len(receps) >= 7
        obs, r, done, info = env.step("go to " + receps[0])
        rn = receps[0]
        assert re.fullmatch(rf"You arrive at {rn}\. (On the {rn}, you see .*\.|The {rn} is closed\.)", obs.text), obs.text
        assert info["action_admissible"] and obs.anchor == obs.text and "help" not in obs.admissible


def test_inadmissible_action_is_nothing_happens_and_counts(one_of_each):
    """An unknown action gets the engine's 'Nothing happens.', counts as a step, is flagged not admissible and
    changes nothing; 'help' is answered by the engine but not admissible; case and spacing are normalised."""
    suite, tasks = one_of_each
    env = suite.new_env()
    obs0 = env.reset(tasks[0])
    key = env.state_key()
    for k, a in enumerate(["go to moon 1", "", None, "take everything"], 1):
        obs, r, done, info = env.step(a)
        assert obs.text == "Nothing happens." and obs.anchor == "Nothing happens."
        assert (r, done, info["action_admissible"], info["steps"]) == (0.0, False, False, k)
        assert obs.admissible == obs0.admissible and env.state_key() == key
    obs, r, done, info = env.step("help")
    assert "Available commands" in obs.text and not info["action_admissible"] and info["steps"] == 5
    go = next(a for a in obs0.admissible if a.startswith("go to "))
    obs, r, done, info = env.step("  " + go.upper().replace(" ", "   ") + " ")
    assert info["action_admissible"] and obs.text.startswith("You arrive at") and env.state_key() != key


def test_step_cap_truncates(one_of_each):
    """50 steps without winning end the episode: done, truncated, reward 0; stepping again is an error."""
    suite, tasks = one_of_each
    env = suite.new_env()
    env.reset(tasks[0])
    for k in range(1, A.MAX_STEPS + 1):
        obs, r, done, info = env.step("inventory" if k % 2 else "go to moon 1")
        assert done == (k == A.MAX_STEPS) and r == 0.0 and not info["won"]
    assert info["truncated"] and info["steps"] == A.MAX_STEPS
    with pytest.raises(AssertionError, match="episode is over"):
        env.step("look")


def test_same_task_gives_identical_episodes(one_of_each):
    """GiGPO's groups: two envs reset to one task (and one env reset again after playing) start identically and
    stay identical under the same actions; task lists are deterministic in (seed, split, i) and prefixes."""
    suite, tasks = one_of_each
    a, b = suite.new_env(), suite.new_env()
    task = tasks[-1]
    oa, ob = a.reset(task), b.reset(task)
    assert oa == ob and a.state_key() == b.state_key()
    first = oa
    while True:
        act = a.expert_action()
        assert act == b.expert_action()
        (oa, ra, da, ia), (ob, rb, db, ib) = a.step(act), b.step(act)
        assert (oa, ra, da, ia) == (ob, rb, db, ib) and a.state_key() == b.state_key()
        if da:
            break
    assert a.reset(task) == first
    again = envs.make("alfworld", "train", n_tasks=40, seed=0, data="", games="elsewhere")
    assert [(t.task_type, t.text) for t in again.tasks] == [(t.task_type, t.text) for t in suite.tasks]
    assert A.make_tasks("train", 10, seed=0, data="", games="x") == A.make_tasks("train", 40, seed=0, data="", games="x")[:10]
    assert A.make_tasks("train", 10, seed=1, data="", games="x") != A.make_tasks("train", 10, seed=0, data="", games="x")


def test_eval_unseen_holds_out_pairings_and_floor_plans():
    """eval_unseen uses only HELD_OUT (object, target) pairings and floor plans 24-29; train and eval_seen never
    do; every split has all six task types."""
    games = {s: [G.plan(0, s, i) for i in range(300)] for s in envs.SPLITS}
    for s, gs in games.items():
        pairs = {(g.obj, g.target) for g in gs}
        plans = {g.plan for g in gs}
        assert {g.task_type for g in gs} == set(G.TASK_TYPES)
        if s == "eval_unseen":
            assert pairs <= G.HELD_OUT and plans <= set(G.UNSEEN_PLANS)
        else:
            assert not pairs & G.HELD_OUT and not plans & set(G.UNSEEN_PLANS)
    assert [g.text for g in games["train"][:50]] != [g.text for g in games["eval_seen"][:50]]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return bootstrap.build(str(tmp_path_factory.mktemp("policy")), quiet=True, **TINY)


def test_prompter_and_projection_on_real_alfworld_text(one_of_each, policy_dir):
    """rollout.Prompter builds the protocol's prompt from the engine's text (task, observation, admissible list), and
    the action projection turns a model output into a command the engine executes (a missing tag: invalid, and
    the engine answers 'Nothing happens.')."""
    from transformers import AutoTokenizer
    suite, tasks = one_of_each
    tok = AutoTokenizer.from_pretrained(policy_dir)
    p = R.Prompter(tok, suite.description, history=2)
    env = suite.new_env()
    obs = env.reset(tasks[0])
    text = p.text(obs.task, 0, [], obs.text, obs.admissible)
    assert f"operating in the ALFRED Embodied Environment. Your task is to: {obs.task}\n" in text
    assert "your current observation is: You are in the middle of a room." in text
    assert "Your admissible actions are: [" + ", ".join(obs.admissible) + "]." in text
    ids = p(obs.task, 0, [], obs.text, obs.admissible)
    assert "Looking quickly around you" in tok.decode(ids)
    target = next(a for a in obs.admissible if a.startswith("go to "))
    action, valid = R.project(f"I will go.<action>{target.upper()}</action>")
    assert valid and action == target
    new, r, done, info = env.step(action)
    assert new.text.startswith(f"You arrive at {target[6:]}.") and info["action_admissible"]
    text2 = p.text(new.task, 1, [(obs.text, action)], new.text, new.admissible)
    assert f"[Observation 1: '{obs.text}', Action 1: '{target}']" in text2
    action, valid = R.project("go to the fridge please")
    assert not valid
    assert env.step(action)[0].text == "Nothing happens."


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    """A data dir that does not exist, one without the split's folder, or a trial lacking game.tw-pddl each raise
    FileNotFoundError naming what was looked for, where, and alfworld-download; $ALFWORLD_DATA (as the user set it,
    not as importing alfworld sets it) is read when no data is given."""
    with pytest.raises(FileNotFoundError, match=r"nope does not exist.*alfworld-download"):
        A.make_tasks("train", 3, data=str(tmp_path / "nope"))
    monkeypatch.setattr(A, "ENV_DATA", str(tmp_path / "nope2"))  # $ALFWORLD_DATA as set when the run started
    with pytest.raises(FileNotFoundError, match="nope2 does not exist"):
        envs.make("alfworld", "train", n_tasks=3)
    monkeypatch.setattr(A, "ENV_DATA", "")  # unset by the user: importing alfworld sets it, which must not count
    assert os.environ["ALFWORLD_DATA"] and envs.make("alfworld", "train", n_tasks=3).tasks[0].gen == (0, "train", 0)
    with pytest.raises(FileNotFoundError, match=r"no eval_unseen games: looked for .*json_2\.1\.1/valid_unseen.*alfworld-download"):
        A.make_tasks("eval_unseen", 3, data=str(tmp_path))
    trial = tmp_path / "json_2.1.1" / "valid_seen" / "pick_and_place_simple-Mug-None-Desk-301" / "trial_T1"
    trial.mkdir(parents=True)
    (trial / "traj_data.json").write_text(json.dumps({"task_type": "pick_and_place_simple"}))
    with pytest.raises(FileNotFoundError, match=r"trial_T1 lacks game\.tw-pddl .*incomplete.*alfworld-download"):
        A.make_tasks("eval_seen", 3, data=str(tmp_path))


def test_official_layout_loader_reads_generated_games(one_of_each, games, tmp_path):
    """Pointed at data in the official layout (here a copy of the generated games), make_tasks lists the solvable
    games sorted by path with traj_data.json's type and the grammar's task text, skips unsolvable and movable ones,
    and the env plays them."""
    suite, tasks = one_of_each
    data = tmp_path / "data"
    shutil.copytree(os.path.join(games, G.VERSION), data)
    made = {os.path.relpath(t.gamefile, os.path.join(games, G.VERSION)): t for t in suite.tasks}
    on_disk = sorted(os.path.relpath(os.path.join(d, "game.tw-pddl"), data)
                     for d, _, fs in os.walk(data / "json_2.1.1" / "train") if "game.tw-pddl" in fs)
    got = A.make_tasks("train", None, data=str(data))
    assert [os.path.relpath(t.gamefile, data) for t in got] == on_disk and len(got) >= 6
    assert all((t.task_type, t.text) == (made[os.path.relpath(t.gamefile, data)].task_type,
                                         made[os.path.relpath(t.gamefile, data)].text) for t in got)
    assert len(A.make_tasks("train", 2, data=str(data))) == 2
    bad = json.load(open(got[0].gamefile))
    json.dump(dict(bad, solvable=False), open(got[0].gamefile, "w"))
    shutil.copytree(os.path.dirname(os.path.dirname(got[1].gamefile)),
                    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(got[1].gamefile))), "movable-x"))
    assert [t.gamefile for t in A.make_tasks("train", None, data=str(data))] == [t.gamefile for t in got[1:]]
    env = A.Env()
    rewards, _, info = play(env, env.reset(got[1]))
    assert info["won"] and not got[1].gen


def test_envs_reuse_engines_and_keep_argv(one_of_each):
    """An env closed or dropped hands its engine (with its copy of Fast Downward's library) to the next env, so
    making fresh envs every iteration (rollout.py) loads no new library copies once warm; resets leave sys.argv
    alone (Fast Downward's translator overwrites it). Counted within the test, after a warm-up round: earlier
    tests may hold engines in live envs, and the env dropped last comes back only when another env parses (see
    alfworld._FREE), so the first round may load one copy; the second, identical round must load none."""
    suite, tasks = one_of_each
    maps = lambda: sum("libdownward" in line for line in open("/proc/self/maps"))
    argv = list(sys.argv)

    def one_round():
        for k in range(8):
            env = suite.new_env()
            env.reset(tasks[k % len(tasks)])
            env.step("look")
            if k % 2:
                env.close()
            del env

    one_round()
    before = maps()
    assert before > 0, "Fast Downward's library is mapped once an env has reset"
    one_round()
    assert maps() == before and sys.argv == argv


def test_gigpo_trains_on_alfworld_end_to_end(policy_dir, games, tmp_path):
    """`python train.py --env alfworld --algo gigpo` runs two iterations on generated games with a tiny policy:
    metrics.jsonl holds both iteration rows (samples from G x N envs within the step cap, an update) and the
    final evaluation on both held-out splits."""
    import train
    out = str(tmp_path / "run")
    final = train.main(["--env", "alfworld", "--algo", "gigpo", "--model", policy_dir, "--out", out, "--iters", "2",
                        "--groups", "2", "--group-size", "2", "--max-steps", "3", "--max-new-tokens", "8",
                        "--train-tasks", "3", "--eval-tasks", "1", "--final-eval-tasks", "1", "--eval-max-steps", "2",
                        "--keep-uniform-groups", "--lr", "1e-3", "--alfworld-data", "", "--alfworld-games", games])
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    it = [r for r in rows if not r.get("eval") and "iter" in r and "samples" in r]
    assert [r["iter"] for r in it] == [1, 2]
    for r in it:
        assert 4 <= r["samples"] <= 2 * 2 * 3 and 0.0 <= r["success"] <= 1.0
        assert r["trained_samples"] > 0 and "pg_loss" in r
    ev = [r for r in rows if r.get("eval")][-1]
    assert ev["eval_seen"]["n"] == ev["eval_unseen"]["n"] == 1 and final["iter"] == 2
    assert set(ev["eval_unseen"]["by_type"]) <= set(G.TASK_TYPES)
    assert json.load(open(os.path.join(out, "args.json")))["env"] == "alfworld"
