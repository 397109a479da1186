"""baselines/reskill.py: triggers and the per-step block, discounted Beta posteriors, P(new better) and its clamp,
the memory M by predictive likelihood, the accept / revert rule, assign's coin flips, the creator with a fake
generate, the max-active cap and the state round trip. Pure Python, hand-computed numbers, no model."""

import json
import math
import random
from argparse import Namespace
from types import SimpleNamespace as NS

import pytest

import mine
import rollout as R
from baselines import reskill as RS

GOOD = ("When to apply: The task asks for a hot object to be put in a receptacle.\n"
        "Strategy: Take it to the microwave first.\n"
        "Key steps: find it | take it | heat it with the microwave | put it in the target")


def args(**kw):
    d = {name[2:].replace("-", "_"): default for name, _, default, _ in RS.FLAGS}
    d.update(kw)
    return Namespace(group_size=4, **d)


def skill(i, key="heat", trigger="always", created=0):
    return dict(id=i, key=key, trigger=trigger, created=created, when=f"when {i}.", strategy=f"strategy {i}.",
                steps="a | b | c")


def describe(task):  # tasks here are (type, text) pairs
    return task


def eps(new=(0, 0), old=(0, 0)):
    """Episodes tagged by version: (wins, losses) of each."""
    out = []
    for v, (w, l) in (("new", new), ("old", old)):
        out += [NS(skill=v, won=True)] * w + [NS(skill=v, won=False)] * l
    return out


def test_flags_have_paper_defaults():
    """Every number is a flag, with the paper's numbers as defaults."""
    d = {name: default for name, _, default, _ in RS.FLAGS}
    assert (d["--rs-max-active"], d["--rs-prior-alpha"], d["--rs-prior-beta"], d["--rs-p-min"], d["--rs-p-max"],
            d["--rs-min-iters"], d["--rs-min-episodes"], d["--rs-max-in-prompt"]) == (8, 1.0, 1.0, 0.15, 0.85, 5, 50, 1)
    assert RS.ReSkill(args(), "x").grid == [5, 10, 20, 50, 100, math.inf]


def test_triggers():
    """always fires every step; first only at step 0; a regex is searched in the previous action (none at 0)."""
    a, f, r = skill(0), skill(1, trigger="first"), skill(2, trigger=r"^take \w+")
    assert [RS.triggered(a, t, p) for t, p in ((0, None), (3, "go to x"))] == [True, True]
    assert [RS.triggered(f, t, p) for t, p in ((0, None), (1, "go to x"))] == [True, False]
    assert RS.triggered(r, 2, "take apple 1 from table 1") and not RS.triggered(r, 2, "go to table 1")
    assert not RS.triggered(r, 0, None) and not RS.triggered(r, 2, "please take apple")  # ^ anchors


def test_stepper_order_and_cap():
    """Shown: first-step, then regex, then always skills, at most max_in_prompt; id names what is shown."""
    ss = [skill(0), skill(1, trigger="first"), skill(2, trigger="heat")]
    one, two = RS.stepper(ss, 1), RS.stepper(ss, 2)
    assert one(0, None, []) == (R.format_skill(ss[1]), "1")
    assert one(1, None, [("o", "heat egg 1 with microwave 1")]) == (R.format_skill(ss[2]), "2")
    assert one(1, None, [("o", "go to fridge 1")]) == (R.format_skill(ss[0]), "0")
    assert two(0, None, []) == (R.format_skill(ss[1]) + R.format_skill(ss[0]), "1+0")
    assert RS.stepper([skill(1, trigger="first")], 1)(1, None, [("o", "x")]) == (None, None)


def test_discounted_posterior_by_hand():
    """M = 10, Beta(1,1): 6 wins 2 losses (w = 10/18 on nothing) -> Beta(7, 3); then 1 win 1 loss, w = 10/12:
    S = 6 * 10/12 + 1 = 6, F = 2 * 10/12 + 1 = 8/3 -> Beta(7, 11/3). An iteration without episodes: no change."""
    rs = RS.ReSkill(args(rs_memory_grid="10"), "x")
    assert RS.weight(10, 8) == 10 / 18 and RS.weight(10, 0) == 1.0 and RS.weight(math.inf, 50) == 1.0
    m = rs.observe(1, eps(old=(6, 2)))
    assert rs.posterior("old") == (7.0, 3.0) and (m["alpha_old"], m["beta_old"]) == (7.0, 3.0)
    rs.observe(2, eps(old=(1, 1)))
    assert rs.posterior("old") == pytest.approx((7.0, 1 + 8 / 3), abs=1e-12)
    rs.observe(3, [])
    assert rs.posterior("old") == pytest.approx((7.0, 1 + 8 / 3), abs=1e-12)
    with pytest.raises(AssertionError, match="no proposal pending"):
        rs.observe(4, eps(new=(1, 0)))


def test_p_better_known_values():
    """P(Beta(a,b) > U(0,1)) = a / (a+b); two equal Betas: 1/2; swapping the arguments gives 1 - P."""
    assert RS.p_better(1, 1, 1, 1) == pytest.approx(0.5, abs=1e-12)
    assert RS.p_better(2, 1, 1, 1) == pytest.approx(2 / 3, abs=1e-6)
    assert RS.p_better(1, 1, 2, 1) == pytest.approx(1 / 3, abs=1e-6)
    assert RS.p_better(5, 3, 1, 1) == pytest.approx(5 / 8, abs=1e-6)
    assert RS.p_better(7, 4, 7, 4) == pytest.approx(0.5, abs=1e-9)
    assert RS.p_better(7, 4, 3, 9) + RS.p_better(3, 9, 7, 4) == pytest.approx(1.0, abs=1e-9)


def test_p_new_clamped_both_ends():
    """P(new better) near 1 -> 0.85, near 0 -> 0.15, 1/2 unchanged; no proposal -> 0."""
    rs = RS.ReSkill(args(), "x")
    assert rs.p_new() == 0.0
    rs._start_test([skill(0)], 0)
    assert rs.p_new() == pytest.approx(0.5, abs=1e-12)
    rs.post = {"new": [40.0, 0.0], "old": [0.0, 40.0]}
    assert rs.p_new() == 0.85
    rs.post = {"new": [0.0, 40.0], "old": [40.0, 0.0]}
    assert rs.p_new() == 0.15


def test_memory_by_predictive_likelihood():
    """One finished test, new version (0 wins, 2 losses), (2, 0), (2, 0); old version unplayed. M = inf: 1/3 (from
    Beta(1,1)) * 1/10 (Beta(1,3)) * 2/7 (Beta(3,3)) = 1/105. M = 1: the same to Beta(1,3), then w = 1/(1+2) on the
    earlier evidence: Beta(1 + 2, 1 + 2/3), whose two wins have 3*4 / (14/3 * 17/3) = 54/119: 1/30 * 54/119 =
    9/595 > 1/105. The drifting test picks M = 1."""
    test = {"new": [(0, 2), (2, 0), (2, 0)], "old": [(0, 0)] * 3}
    M, ll = RS.choose_memory([test], [1.0, math.inf])
    assert ll[math.inf] == pytest.approx(math.log(1 / 105), abs=1e-12)
    assert ll[1.0] == pytest.approx(math.log(9 / 595), abs=1e-12) and M == 1.0
    flat = {"new": [(1, 1), (1, 1)], "old": []}  # ties break to the larger M
    assert RS.choose_memory([{"new": [], "old": []}], [5.0, 10.0])[0] == 10.0
    assert RS.choose_memory([flat], [1.0, math.inf])[0] == math.inf


def pending(rs, skills, it=0):
    """Start a test of `skills` as the creator would (the proposal counter names the version)."""
    rs.n["proposals"] += 1
    rs._start_test(skills, it)


def run_test(rs, new, old, iters):
    out = []
    for it in range(1, iters + 1):
        out.append(rs.observe(it, eps(new, old)))
    return out


def test_accept_only_after_min_iters_and_episodes():
    """New wins everything, old nothing: no decision before 5 iterations (10 new episodes each) or before 50 new
    episodes (8 each: 40 after 5, 48 after 6); then accepted: the new set becomes old with its posterior."""
    rs = RS.ReSkill(args(rs_memory_grid="inf"), "x")
    pending(rs, [skill(0)])
    ms = run_test(rs, (10, 0), (0, 10), 5)
    assert [m["decided"] for m in ms] == [0, 0, 0, 0, 1] and rs.new is None and rs.old == [skill(0)]
    assert rs.posterior("old") == (51.0, 1.0) and rs.counts()["accepted"] == 1
    assert [(e.get("version"), e["to"]) for e in rs.events] == [(1, "accepted"), (None, "active")]
    assert rs.version == 1 and rs.tests == [{"new": [(10, 0)] * 5, "old": [(0, 10)] * 5}]
    rs = RS.ReSkill(args(rs_memory_grid="inf"), "x")
    pending(rs, [skill(0)])
    ms = run_test(rs, (8, 0), (0, 8), 7)
    assert [m["decided"] for m in ms] == [0, 0, 0, 0, 0, 0, 1] and ms[5]["test_eps"] == 48


def test_revert_when_not_higher():
    """New worse, or equal posterior means: reverted, the old set and its posterior stay; the test is recorded."""
    for new, old in (((0, 10), (10, 0)), ((5, 5), (5, 5))):
        rs = RS.ReSkill(args(rs_memory_grid="inf"), "x")
        rs.old = [skill(1)]
        pending(rs, [skill(2)])
        ms = run_test(rs, new, old, 5)
        assert ms[-1]["decided"] == -1 and rs.new is None and rs.old == [skill(1)]
        assert rs.posterior("old") == (1.0 + 5 * old[0], 1.0 + 5 * old[1]) and rs.counts()["reverted"] == 1
        assert rs.tests == [{"new": [new] * 5, "old": [old] * 5}] and rs.events[-1]["to"] == "discarded"


def test_assign_coin_flips_deterministic_and_respect_p():
    """One rng.random() per env, new iff < clamp(P); the same seed gives the same tags; no proposal: all old and
    no rng draws. Each env's callable is its version's skills of its task's key."""
    rs = RS.ReSkill(args(), "x")
    rs.old = [skill(0, key="heat"), skill(1, key="cool")]
    tasks = [("heat", "heat an egg"), ("cool", "cool an apple")] * 50
    rng = random.Random(3)
    sk, ids = rs.assign(0, tasks, 4, rng, describe)
    assert ids == ["old"] * 400 and rng.random() == random.Random(3).random()
    rs._start_test([skill(2, key="heat")], 0)
    rs.post = {"new": [2.0, 1.0], "old": [1.0, 2.0]}  # Beta(3,2) vs Beta(2,3): P = 53/70
    p = RS.p_better(3, 2, 2, 3)
    assert p == pytest.approx(53 / 70, abs=1e-6) and rs.p_new() == p
    sk, ids = rs.assign(0, tasks, 4, random.Random(7), describe)
    ref = random.Random(7)
    assert ids == ["new" if ref.random() < p else "old" for _ in range(400)]
    assert rs.assign(0, tasks, 4, random.Random(7), describe)[1] == ids
    assert abs(ids.count("new") / 400 - p) < 0.06
    k = ids.index("new")  # a 'new' env of a heat task sees skill 2; an old cool env sees skill 1
    assert sk[k](0, None, []) == (R.format_skill(skill(2, key="heat")), "2")
    j = next(i for i, v in enumerate(ids) if v == "old" and (i // 4) % 2 == 1)
    assert sk[j](5, None, [("o", "x")]) == (R.format_skill(skill(1, key="cool")), "1")
    k = next(i for i, v in enumerate(ids) if v == "new" and (i // 4) % 2 == 1)  # no new skill for cool
    assert sk[k](0, None, []) == (None, None)


def trajectories():
    """Two heat tasks (one win of 3 steps, one of 2), one cool task (a win, a loss): eps and steps."""
    spec = [(0, "heat", "heat an egg.", True, 3), (1, "heat", "heat a mug.", True, 2),
            (2, "cool", "cool an apple.", True, 2), (3, "cool", "cool a pan.", False, 4)]
    es = [NS(traj=t, group=t, won=w, task_text=txt, task_type=k, skill="old") for t, k, txt, w, _ in spec]
    ss = [NS(traj=t, step=i, action=f"act {t}.{i}", anchor="") for t, *_, n in spec for i in reversed(range(n))]
    return es, ss


def test_propose_with_fake_generate():
    """Keys with a win, lowest success rate first (cool 1/2, then heat 2/2); the shortest win of each in the mining
    prompt; a garbage answer is dropped and counted, the valid one becomes an 'always' skill of its key."""
    rs = RS.ReSkill(args(), "the house")
    es, ss = trajectories()
    seen = []

    def generate(prompts):
        seen.extend(prompts)
        return [GOOD, "I think you should heat it."]

    m = rs.propose(4, es, ss, generate)
    assert seen == [mine.mining_prompt("the house", "cool an apple.", ["act 2.0", "act 2.1"]),
                    mine.mining_prompt("the house", "heat a mug.", ["act 1.0", "act 1.1"])]
    assert m == dict(proposed=1, create_prompts=2, create_dropped=1, create_unchanged=0)
    assert rs.new == [dict(id=0, key="cool", trigger="always", created=4, **mine.parse_skill(GOOD))] and rs.old == []
    assert rs.since == 4 and rs.events[-1] == dict(iteration=4, skill=0, **{"from": None, "to": "proposed"},
                                                   reason="in version 1")
    assert rs.propose(5, es, ss, lambda p: 1 / 0) == dict(proposed=0, create_prompts=0, create_dropped=0,
                                                          create_unchanged=0)  # a test is running
    rs2 = RS.ReSkill(args(rs_create_every=3), "the house")
    assert rs2.propose(4, es, ss, lambda p: 1 / 0)["proposed"] == 0  # not a creation iteration


def test_propose_replaces_same_key_and_caps_active():
    """A created skill replaces its key's 'always' skill; a full set of 8 loses its oldest skill; an answer equal
    to a skill already there changes nothing (no proposal)."""
    es, ss = trajectories()
    rs = RS.ReSkill(args(rs_create_count=1), "h")
    rs.old = [skill(i, key=f"k{i}", created=10 - i) for i in range(7)] + [skill(7, key="cool", created=9)]
    rs.next_id = 8
    rs.propose(11, es, ss, lambda p: [GOOD])
    assert [s["id"] for s in rs.new] == [0, 1, 2, 3, 4, 5, 6, 8] and rs.new[-1]["key"] == "cool"
    rs = RS.ReSkill(args(rs_create_count=2), "h")
    rs.old = [skill(i, key=f"k{i}", created=10 - i) for i in range(8)]
    rs.next_id = 8
    rs.propose(11, es, ss, lambda p: [GOOD, GOOD.replace("hot", "cold")])
    assert len(rs.new) == 8 and {s["id"] for s in rs.new} == {0, 1, 2, 3, 4, 5, 8, 9}  # 7 and 6 were oldest
    rs = RS.ReSkill(args(rs_create_count=1), "h")
    rs.old = [dict(skill(3, key="cool"), **mine.parse_skill(GOOD))]
    m = rs.propose(2, es, ss, lambda p: [GOOD])
    assert m["create_unchanged"] == 1 and m["proposed"] == 0 and rs.new is None and rs.next_id == 0


def test_state_round_trip_and_eval():
    """state() survives JSON (inf memory included) and from_state restores the same behaviour; evaluation uses
    the accepted set even while a proposal is pending; markdown names both versions."""
    rs = RS.ReSkill(args(), "h")
    rs.old = [skill(5, key="heat")]
    es, ss = trajectories()
    rs.propose(1, es, ss, lambda p: [GOOD, GOOD])
    rs.observe(2, eps(new=(3, 1), old=(1, 2)))
    d = json.loads(json.dumps(rs.state()))
    back = RS.ReSkill.from_state(args(), "h", d)
    assert back.state() == rs.state() and back.memory == math.inf
    assert back.p_new() == rs.p_new() and back.posterior("new") == (4.0, 2.0)
    assert back.assign(3, [("heat", "t")], 8, random.Random(1), describe)[1] == \
        rs.assign(3, [("heat", "t")], 8, random.Random(1), describe)[1]
    ev = back.eval_skill_of(describe)(("heat", "t"))
    assert ev(0, None, []) == (R.format_skill(skill(5)), "5")
    md = back.markdown()
    assert "## Version 0 (accepted)" in md and "## Version 1 (proposed at iteration 1)" in md
    rs.tests, rs.memory = [{"new": [(1, 1)], "old": []}], 10.0
    assert RS.ReSkill.from_state(args(), "h", json.loads(json.dumps(rs.state()))).tests == rs.tests
