"""mine.py: the mining prompt and the strict skill parser; bootstrap's reference skills parse back exactly."""

import random

import pytest

import bootstrap
import envs
import mine

GOOD = ("When to apply: The task asks for a hot object to be put in a receptacle.\n"
        "Strategy: Take it to the microwave first.\n"
        "Key steps: find it | take it | heat it with the microwave | put it in the target")


def test_parse_good_skill():
    s = mine.parse_skill("\n" + GOOD.replace("|", " |  ") + "\n\n")
    assert s == dict(when="The task asks for a hot object to be put in a receptacle.",
                     strategy="Take it to the microwave first.",
                     steps="find it | take it | heat it with the microwave | put it in the target")
    assert mine.parse_skill(mine.skill_text(s)) == s


@pytest.mark.parametrize("bad", [
    "",
    GOOD.replace("When to apply:", "When:"),                                   # wrong label
    "\n".join(reversed(GOOD.splitlines())),                                    # wrong order
    GOOD + "\nExtra line",                                                     # a fourth line
    GOOD.replace("Strategy: Take it to the microwave first.", "Strategy:"),    # empty field
    GOOD.replace("a hot object", "the apple 1"),                               # an object id in 'when'
    GOOD.replace("find it | take it | ", ""),                                  # 2 steps
    GOOD.replace("find it |", "a | b | c | find it |"),                        # 6 steps
    GOOD.replace("find it |", "find it | |"),                                  # an empty step
    GOOD.replace("first.", "first. " + "word " * 80),                          # too long
])
def test_parse_rejects(bad):
    assert mine.parse_skill(bad) is None


def test_mining_prompt_lists_actions_in_order():
    p = mine.mining_prompt("the ALFRED Embodied Environment", "put a hot egg in fridge.",
                           ["go to countertop 1", "take egg 1 from countertop 1"])
    assert "the task: put a hot egg in fridge.\nActions: go to countertop 1 | take egg 1 from countertop 1\n" in p
    assert all(label in p for _, label in mine.FIELDS)


def test_reference_skills_parse_and_fit_spec():
    rng = random.Random(0)
    for ttype in bootstrap.WRONG_SKILL:
        for first in (False, True):
            s = bootstrap.reference_skill(ttype, rng, first)
            assert mine.parse_skill(mine.skill_text(s)) == s
            assert 40 <= len(mine.skill_text(s).split()) <= 90


def test_target_first_demos_follow_their_skill():
    """A target-first skill's episode opens by going to the target (so the skill must be read); plain episodes
    of rare types are dropped down to rare_plain."""
    suite = envs.make("household", "train", n_tasks=300, seed=0)
    text = lambda task, t, past, obs, adm: f"{task}|{t}|{obs}"
    triples = bootstrap.demonstrations(suite, 120, 0, text, noise=0.0, skill_frac=1.0)
    first_steps = [(s, a) for p, s, a in triples if p.split("|")[1] == "0"]
    assert len(first_steps) == 120
    tf = [(s, a) for s, a in first_steps if "first" in s.split("Key steps:")[1].split("|")[0]]
    assert 30 < len(tf) < 90
    for s, a in tf:
        assert a.startswith("go to "), a
    plain = bootstrap.demonstrations(suite, 120, 0, text, noise=0.0, rare=("pick_heat_then_place_in_recep",),
                                     rare_plain=0.0)
    assert not any("hot" in p.split("|")[0] or "heat" in p.split("|")[0] for p, _, _ in plain)
