"""The experiments' judges, decision rules and statistics (no model needed)."""

import math

import bootstrap as B
import mine
from experiments import common as C
from experiments import internalize, lifecycle, mining


def test_mining_judge_accepts_each_reference_skill_for_its_own_type_only():
    for t in B.HOUSEHOLD_TYPES:
        for first in (False, True):
            skill = B.reference_skill(t, None, first)
            assert mining.judge(skill, C.SHORT[t]) == (True, True), (t, skill)
            for other in B.HOUSEHOLD_TYPES - {t}:
                assert mining.judge(skill, C.SHORT[other])[1] is False, (t, other)
    assert mining.judge(None, "heat") == (False, False)
    skipped = dict(B.reference_skill("pick_heat_then_place_in_recep"), steps="take the egg | put it on the target")
    assert mining.judge(skipped, "heat") == (True, False)  # the heat step is missing


def test_lifecycle_rules():
    assert lifecycle.decide([0.5, 0.25, 0.0, 0.0], "paper", 12) == ("active", 3)
    assert lifecycle.decide([0.0] * 12, "paper", 12) == ("candidate", 12)
    assert lifecycle.decide([0.0] * 12, "ties", 12) == ("retired", 3)
    assert lifecycle.decide([0.0, 0.0, 0.25, 0.25, 0.25, 0.25], "n6", 12) == ("active", 6)
    assert lifecycle.decide([0.0, 0.0, 1.0, -0.5, -0.75, 0.0], "paper", 12) == ("retired", 5)  # active, then demoted
    assert lifecycle.decide([0.0, 0.0, 1.0, -0.5, 0.0], "ties", 12) == ("active", 3)  # the first decision only
    assert lifecycle.decide([-0.25, 0.0, 0.0] + [0.0] * 9, "se", 12) == ("retired", 12)  # never 2 SE off 0
    assert lifecycle.decide([0.5, 0.5, 0.75], "se", 12) == ("active", 3)
    assert lifecycle.decide([-0.25, -0.25, -0.25], "se", 12) == ("retired", 3)


def test_paired_statistics():
    m, se = C.paired([0, 0, 1, 1], [1, 0, 1, 1])
    assert m == 0.25 and math.isclose(se, 0.25)
    assert C.mean_se([1.0]) == (1.0, 0.0)


def test_oracle_bank_holds_active_reference_skills(tmp_path):
    path = internalize.oracle_bank(str(tmp_path / "bank.json"), C.SKILL_TYPES)
    bank = mine.SkillBank.load(path)
    assert [(s.key, s.status) for s in bank.skills.values()] == [(t, "active") for t in C.SKILL_TYPES]
    s = bank.retrieve(C.SKILL_TYPES[0], "put a hot egg in countertop.", None, explore=False)
    assert s.fields == B.reference_skill(C.SKILL_TYPES[0])


def test_mining_summary_pools_types_and_averages_seeds():
    row = lambda t, ok, right: dict(type=t, well_formed=ok, correct=right)
    runs = {"0": [row("heat", True, True), row("cool", True, False)], "1": [row("heat", False, False), row("heat", True, True)]}
    s = mining.summarize(runs)
    assert s["heat"] == dict(n=3, well_formed=2 / 3, correct=2 / 3)
    assert s["cool"] == dict(n=1, well_formed=1.0, correct=0.0)
    assert s["all"]["n"] == 4 and s["all"]["correct_seeds"] == C.mean_se([0.5, 0.5])
    assert s["all"]["well_formed_seeds"] == C.mean_se([1.0, 0.5])


def test_e2e_pools_the_skill_dependent_types_over_both_splits():
    from experiments import e2e
    heat, cool = C.SKILL_TYPES
    final = dict(eval_seen=dict(by_type={heat: 0.5, cool: 0.0, "pick_and_place_simple": 1.0},
                                by_type_n={heat: 2, cool: 2, "pick_and_place_simple": 5}),
                 eval_unseen=dict(by_type={heat: 1.0}, by_type_n={heat: 1}))
    assert e2e.rare(final) == 2 / 5  # (1 + 0 + 1) won of 5 heat/cool tasks; the pick tasks do not count


def test_lifecycle_noise_and_truncation():
    runs = {"0": {"a": dict(correct=True, deltas=[0.5, 0.0, 0.5, 0.0, -9.0]), "b": dict(correct=False, deltas=[0.0, 0.0, 0.0, 0.0])}}
    z = lifecycle.noise(runs, 4)  # the fifth delta of "a" is beyond --uses
    assert z["correct"]["mean"] == 0.25 and z["wrong"]["mean"] == 0.0
    assert math.isclose(z["correct"]["sd_group"], math.sqrt(4 * 0.25 ** 2 / 3))
    sd = math.sqrt(z["correct"]["sd_group"] ** 2 / 2)
    assert z["uses_for_95"] == math.ceil((1.645 * sd / 0.125) ** 2)
    assert lifecycle.decide([0.5, 0.5, 0.5, -9.0], "paper", 3) == ("active", 3)
