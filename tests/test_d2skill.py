"""baselines/d2skill.py: TF-IDF cosine and the re-ranking formula by hand, the running-average utilities of task
and step skills, the return bonus, pruning with young-skill protection, reflection with a fake generate, the
state round trip, and assign's plain / skill halves with task skills cached across steps. Pure Python, no model."""

import json
import math
import random
from types import SimpleNamespace

import pytest

import mine
import rollout as R
from baselines import d2skill as D
from envs import Observation

DESC = "a household"
GOOD = ("When to apply: The task asks to put an object in a receptacle.\nStrategy: Find it first.\n"
        "Key steps: go to it | take it | put it in the target")


def flags(**kw):
    """A Namespace as train.py's argparse gives it: every FLAGS dest at its default, plus group_size."""
    a = SimpleNamespace(group_size=4, **{f[2:].replace("-", "_"): d for f, _, d, _ in D.FLAGS})
    a.__dict__.update(kw)
    return a


def sk(when="put it somewhere", strategy="Do it.", steps="a | b | c"):
    return dict(when=when, strategy=strategy, steps=steps)


def ep(group, traj, won, tag=None, steps=1, text="put a mug in cabinet.", ttype="pick"):
    return R.Episode(group, traj, None, ttype, bool(won), float(won), steps, tag, task_text=text)


def st(traj, step, reward=0.0, skill=None, action="", anchor="", group=0):
    return R.Step([], [], [], reward, True, anchor, group, traj, step, skill, action)


def test_flags_and_defaults():
    """Every flag is a (--d2-..., type, default, help) row; the paper's numbers and our two choices are the defaults."""
    d = {f: v for f, _, v, _ in D.FLAGS}
    assert all(f.startswith("--d2-") and h for f, _, _, h in D.FLAGS)
    assert (d["--d2-lambda"], d["--d2-ema"], d["--d2-reflect-below"], d["--d2-candidates"], d["--d2-sim-weight"],
            d["--d2-explore"], d["--d2-capacity"], d["--d2-prune-every"], d["--d2-young"]) == \
        (1.0, 0.5, 0.5, 10, 0.1, 0.05, 300, 5, 10)
    assert d["--d2-top-k"] == 1 and d["--d2-min-sim"] == 0.2
    with pytest.raises(AssertionError):
        D.D2Skill(flags(group_size=3), DESC)


def _ranking_bank(**kw):
    """Task pool: docs {apple: 2}, {apple, pear}, {apple: 3}, {kiwi: 2} (type and obs empty)."""
    b = D.D2Skill(flags(**{"d2_top_k": 3, **kw}), DESC)
    for task, when in (("apple", "apple"), ("apple", "pear"), ("apple", "apple apple"), ("kiwi", "kiwi")):
        b.add("task", sk(when=when), "", task, "", 0, "test")
    for sid, (u, n) in enumerate([(0.0, 0), (0.5, 2), (0.03, 6), (1.0, 0)]):
        b.skills[sid].utility, b.skills[sid].uses = u, n
    return b


def test_tfidf_cosine_by_hand():
    """idf = log((1 + D) / (1 + df)) + 1 with D = 4: apple df 3, pear df 1; cosine of 'apple' with each doc."""
    b = _ranking_bank()
    docs = [s.doc for s in b.pool("task")]
    ia, ip = math.log(5 / 4) + 1, math.log(5 / 2) + 1
    sims = D.cosine(D.tfidf_index(docs), "Apple 12", len(docs))  # digits and case dropped
    assert sims.tolist() == pytest.approx([1.0, ia / math.hypot(ia, ip), 1.0, 0.0])
    assert D.words("Cabinet 1, pick_two_obj") == ["cabinet", "pick", "two", "obj"]


def test_retrieval_ranking_matches_formula():
    """Re-rank 0.1 sim + 0.9 (u + 0.05 sqrt(log(1 + N) / (1 + n))), N = 8 uses in the pool. Hand values:
    skill 0 (sim 1, u 0, n 0) 0.1667; skill 1 (sim 0.538, u 0.5, n 2) 0.5423; skill 2 (sim 1, u 0.03, n 6) 0.1522;
    skill 3 (u 1.0) is below the 0.2 floor (sim 0) and never returned. Without exploration (eval) skill 2 beats 0."""
    b = _ranking_bank()
    ia, ip = math.log(5 / 4) + 1, math.log(5 / 2) + 1
    sim1, N = ia / math.hypot(ia, ip), 8
    score = lambda sim, u, n, c=0.05: 0.1 * sim + 0.9 * (u + c * math.sqrt(math.log(1 + N) / (1 + n)))
    s0, s1, s2 = score(1.0, 0.0, 0), score(sim1, 0.5, 2), score(1.0, 0.03, 6)
    assert s1 > s0 > s2 and round(s0, 4) == 0.1667 and round(s1, 4) == 0.5423 and round(s2, 4) == 0.1522
    assert [s.id for s in b.retrieve("task", "apple")] == [1, 0, 2]
    assert [s.id for s in b.retrieve("task", "apple", explore=False)] == [1, 2, 0]  # 0.5038, 0.127, 0.1
    assert [s.id for s in _ranking_bank(d2_candidates=2).retrieve("task", "apple")] == [0, 2]  # top-2 by sim only
    assert [s.id for s in _ranking_bank(d2_top_k=1).retrieve("task", "apple")] == [1]
    assert b.retrieve("task", "kiwi")[0].id == 3 and b.retrieve("task", "banana") == [] and b.retrieve("step", "x") == []


def test_utilities_running_average():
    """Task skill 0 in groups with gaps 0.5 and 1.0 -> u = 0.5 * 0 + 0.5 * 0.75 = 0.375; step skill 1 credits
    0.5 and 1.0 -> 0.375; step skill 2 credit 0.5 -> 0.25. Next iteration gap 0 / credit 0 halves skills 0 and 2."""
    b = D.D2Skill(flags(), DESC)
    for pool in ("task", "step", "step"):
        b.add(pool, sk(when=f"w{b.next_id}"), "pick", "t", "o", 0, "test")
    eps = [ep(0, 0, 1), ep(0, 1, 0), ep(0, 2, 1, "d2"), ep(0, 3, 1, "d2"),  # plain mean 0.5, gap 0.5
           ep(1, 4, 0), ep(1, 5, 0), ep(1, 6, 1, "d2"), ep(1, 7, 1, "d2")]  # plain mean 0, gap 1.0
    used = [(0, None), (1, None), (2, (0, 1)), (2, (0,)), (3, (0, 2)), (4, None), (5, None), (6, [0, 1]), (7, (0,))]
    m = b.observe(1, eps, used)
    assert [(s.utility, s.uses) for s in b.skills.values()] == [(0.375, 2), (0.375, 2), (0.25, 1)]
    assert m == dict(d2_task_skills=1, d2_step_skills=2, d2_groups=2, d2_gap=0.75, d2_skill_trajs=4, d2_credit=0.75,
                     d2_updated=3, d2_pruned=0)
    b.observe(2, [ep(0, 0, 0), ep(0, 1, 0), ep(0, 2, 0, "d2"), ep(0, 3, 0, "d2")], [(2, (0, 2)), (3, None)])
    assert [(s.utility, s.uses) for s in b.skills.values()] == [(0.1875, 3), (0.375, 2), (0.125, 2)]


def test_return_bonus():
    """lambda 0.5. Group 0: plain returns 10 and 0 (mean 5); skill traj 2 (return 10, saw a skill) gets +2.5 on its
    last step (step 1, listed first), traj 3 (return 0) gets -2.5. Group 1: skill traj 5 (return 10, plain 0)
    saw no skill: nothing."""
    b = D.D2Skill(flags(d2_lambda=0.5), DESC)
    steps = [st(2, 1, 10.0), st(0, 0), st(0, 1, 10.0), st(1, 0), st(1, 1), st(1, 2), st(2, 0, 0.0, (0,)),
             st(3, 0, 0.0, (1,)), st(4, 0, 0.0, group=1), st(5, 0, 10.0, group=1)]
    eps = [ep(0, 0, 1), ep(0, 1, 0), ep(0, 2, 1, "d2"), ep(0, 3, 0, "d2"), ep(1, 4, 0), ep(1, 5, 1, "d2")]
    assert b.bonus(steps, eps) is None
    assert [s.reward for s in steps] == [12.5, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0, -2.5, 0.0, 10.0]


def test_pruning_protects_young():
    """Capacity 3, 5 task skills (utilities 0.3, -0.2, 0.1, -0.9, -0.8; the last two added at iteration 8): at
    iteration 10 the two lowest of the old ones go (1 and 2), the young -0.9 and -0.8 stay; not at iteration 9."""
    b = D.D2Skill(flags(d2_capacity=3), DESC)
    for i, (u, created) in enumerate([(0.3, 0), (-0.2, 0), (0.1, 0), (-0.9, 8), (-0.8, 8)]):
        b.add("task", sk(when=f"w{i}"), "pick", "t", "", created, "test")
        b.skills[i].utility = u
    b.add("step", sk(), "pick", "t", "o", 0, "test")
    assert b.observe(9, [], [])["d2_pruned"] == 0 and len(b.skills) == 6
    assert b.observe(10, [], [])["d2_pruned"] == 2
    assert sorted(b.skills) == [0, 3, 4, 5]
    assert [(e["skill"], e["from"], e["to"]) for e in b.events[-2:]] == [(1, "task", "pruned"), (2, "task", "pruned")]
    assert [s.id for s in b.retrieve("task", "pick t w1")] != [1]  # the index was rebuilt without it


def test_reflection_with_fake_generate():
    """Group 0 (1 of 4 won) is reflected: a task prompt from the success's actions and a step prompt from step 1
    on (failed traj 1 left the success's path at step 1, trajs 2 and 3 at step 0: the latest counts). Group 1
    (all won) is not; group 2 (none won) is skipped. The fake answers the task prompt with a valid skill, the
    step prompt with garbage."""
    b = D.D2Skill(flags(), DESC)
    text = "put a mug in cabinet."
    path = [("o0", "go to desk 1"), ("o1", "take mug 1 from desk 1"), ("o2", "go to cabinet 1"), ("o3", "put mug")]
    steps = [st(0, t, 10.0 * (t == 3), action=a, anchor=o) for t, (o, a) in enumerate(path)]
    steps += [st(1, 0, action="go to desk 1", anchor="o0"), st(1, 1, action="go to shelf 1", anchor="o1")]
    steps += [st(k, 0, action="look", anchor="o0") for k in (2, 3)]
    eps = [ep(0, 0, 1, steps=4), ep(0, 1, 0, steps=2), ep(0, 2, 0), ep(0, 3, 0, "d2")]
    eps += [ep(1, 4 + k, 1) for k in range(4)] + [ep(2, 8 + k, 0) for k in range(4)]
    steps += [st(4 + k, 0, 10.0, action="x", group=1) for k in range(4)]
    steps += [st(8 + k, 0, action="x", group=2) for k in range(4)]
    task_prompt = mine.mining_prompt(DESC, text, [a for _, a in path])
    step_prompt = mine.mining_prompt(DESC, text, [a for _, a in path[1:]])
    seen = []

    def generate(prompts):
        seen.append(list(prompts))
        return [GOOD if "Actions: go to desk 1" in p else "no skill here" for p in prompts]
    m = b.reflect(3, eps, steps, generate)
    assert seen == [[task_prompt, step_prompt]]
    assert m == dict(d2_reflect_groups=1, d2_reflect_skipped=1, d2_reflect_added=1, d2_reflect_dropped=1,
                     d2_reflect_duplicates=0)
    s = b.skills[0]
    assert (s.pool, s.task, s.task_type, s.obs, s.created, s.fields) == ("task", text, "pick", "", 3,
                                                                         mine.parse_skill(GOOD))
    assert b.events == [dict(iteration=3, skill=0, **{"from": None, "to": "task"}, reason=f"reflected on {text!r}")]
    m = b.reflect(4, eps, steps, lambda ps: [GOOD] * len(ps))  # now both parse: the task skill is a duplicate
    assert (m["d2_reflect_added"], m["d2_reflect_duplicates"], m["d2_reflect_dropped"]) == (1, 1, 0)
    assert (b.skills[1].pool, b.skills[1].obs) == ("step", "o1")  # keyed by the observation at the divergence


def _filled_bank():
    b = D.D2Skill(flags(), DESC)
    b.add("task", sk(when="put a mug in a cabinet"), "pick", "put a mug in cabinet.", "", 0, "test")
    b.add("step", sk(when="open it", steps="open it | take | go"), "pick", "put a mug in cabinet.",
          "The fridge 1 is closed.", 0, "test")
    b.add("step", sk(when="take the knife", steps="take | go | put"), "pick", "put a mug in cabinet.",
          "On the countertop 1, you see a knife 2.", 0, "test")
    return b


def test_state_round_trip():
    """state() survives JSON; from_state gives the same skills, events, counts, Markdown and retrieval."""
    b = _filled_bank()
    b.observe(1, [ep(0, 0, 0), ep(0, 1, 1, "d2")], [(1, (0, 1))])
    d = json.loads(json.dumps(b.state()))
    c = D.D2Skill.from_state(flags(), DESC, d)
    assert c.state() == b.state() and c.markdown() == b.markdown() and c.counts() == {"task_skills": 1, "step_skills": 2}
    assert c.skills[0].utility == 0.5 and c.skills[1].uses == 1 and c.next_id == 3
    assert [s.id for s in c.retrieve("step", "pick put a mug The fridge 1 is closed.")] == [1]
    assert "## Step skills" in c.markdown() and "- Observation: The fridge 1 is closed." in c.markdown()


def test_assign_halves_and_task_cache():
    """Empty bank: all plain. Then per group of 4: two plain (None, None), two callables tagged 'd2'. The callable
    returns the task block then the step block, the step skill following the observation; the task skill
    retrieved at t == 0 is kept for the episode even when a better one appears; paired_deltas still works."""
    describe = lambda task: ("pick", task)
    tasks = ["put a mug in cabinet.", "put a mug in cabinet."]
    b = D.D2Skill(flags(), DESC)
    assert b.assign(0, tasks, 4, random.Random(0), describe) == ([None] * 8, [None] * 8)
    assert b.eval_skill_of(describe)(tasks[0]) is None
    b = _filled_bank()
    skills, ids = b.assign(1, tasks, 4, random.Random(0), describe)
    assert ids == [None, None, "d2", "d2"] * 2
    assert [callable(s) for s in skills] == [False, False, True, True] * 2 and skills[0] is None
    obs = lambda text: Observation(text, text, (), tasks[0], "pick")
    block, sid = skills[2](0, obs("The fridge 1 is closed."), [])
    assert sid == (0, 1)
    assert block == R.format_skill(b.skills[0].fields) + R.format_skill(b.skills[1].fields)
    new = b.add("task", sk(when="put a mug in a cabinet now"), "pick", "put a mug in cabinet.", "", 1, "test")
    b.skills[new].utility = 1.0
    assert skills[2](1, obs("On the countertop 1, you see a knife 2."), [])[1] == (0, 2)  # cached task skill
    assert skills[3](0, obs("The fridge 1 is closed."), [])[1] == (new, 1)  # a fresh episode retrieves anew
    assert b.eval_skill_of(describe)(tasks[0])(0, obs("x"), [])[1][0] == new
    eps = [ep(0, k, k == 3, ids[k]) for k in range(4)]
    assert mine.paired_deltas(eps) == {0: ("d2", 0.5)}
