"""mine.py: the mining prompt and the strict skill parser (bootstrap's reference skills parse back exactly); the
success buffer, batched mining, paired validation and the skill bank's lifecycle, eviction, retrieval, files.

CPU, a few seconds: a tiny random model and a small BPE tokenizer built here; lifecycle numbers by hand."""

import json
import os
import random
from types import SimpleNamespace

import pytest
import torch

import bootstrap
import envs
import mine
import model as M
import rollout as R

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
    for ttype in bootstrap.WRONG_SKILL:  # every registered env's keys; the variant where the env has one
        for first in (False, True) if ttype in bootstrap.HOUSEHOLD_TYPES else (False,):
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



def test_naive_and_wrong_skill_demos_skip_the_procedure():
    """A rare type's naive plain episode and its wrong-skill episode never use the appliance, and the naive one
    ends at the put of the goal object; with the correct skill the same type's episodes heat."""
    suite = envs.make("household", "train", n_tasks=300, seed=0)
    text = lambda task, t, past, obs, adm: f"{task}|{t}"
    heat = "pick_heat_then_place_in_recep"
    def episodes(**kw):
        eps = []
        for p, s, a in bootstrap.demonstrations(suite, 120, 0, text, noise=0.0, rare=(heat,), **kw):
            if p.split("|")[1] == "0":
                eps.append((p.split("|")[0], s, []))
            eps[-1][2].append(a)
        return [(task, s, acts) for task, s, acts in eps if "hot" in task or "heat" in task]
    naive = episodes(rare_plain=1.0, rare_naive=1.0)
    assert len(naive) > 5
    for _, s, acts in naive:
        assert s is None and not any(a.startswith("heat ") for a in acts) and acts[-1].startswith("put "), acts
    wrong = episodes(skill_frac=1.0, wrong_frac=1.0)
    assert len(wrong) > 5
    for _, s, acts in wrong:
        assert "cool" in s and not any(a.startswith(("heat ", "cool ")) for a in acts), (s, acts)
    right = episodes(skill_frac=1.0)
    assert right and all(any(a.startswith("heat ") for a in acts) for _, _, acts in right)


def test_shop_demos_replay_to_a_win():
    """Shop demonstrations (no task types, no skills): with no noise, each episode's actions replayed in a
    fresh env end it with a purchase (the observable expert wins about 62% of goals), every action was
    admissible where it was taken."""
    suite = envs.make("shop", "train", n_tasks=40, seed=0)
    text = lambda task, t, past, obs, adm: (task, t, adm)
    triples = bootstrap.demonstrations(suite, 10, 0, text, noise=0.0)
    episodes = [[]]
    for (task, t, adm), skill, a in triples:
        assert skill is None
        if t == 0 and episodes[-1]:
            episodes.append([])
        episodes[-1].append((task, adm, a))
    assert len(episodes) == 10
    env = suite.new_env()
    by_text, won = {env.reset(t).task: t for t in suite.tasks}, 0
    for ep in episodes:
        env.reset(by_text[ep[0][0]])
        for _, adm, a in ep:
            assert a in adm or a.startswith("search[")
            obs, r, done, info = env.step(a)
        assert done and not info["truncated"] and ep[-1][2] == "click[buy now]"
        won += info["won"]
    assert won >= 4

# -----------------------------------------------------------------------------
# success buffer

def _step(traj, t, action, skill=None):
    return R.Step([1], [2], [-0.1], 0.0, True, "obs", traj // 2, traj, t, skill, action)


def test_buffer_keeps_won_plain_actions_in_step_order():
    """Only won plain episodes enter, each with its own actions in step order (steps arrive interleaved, as in
    lockstep rollouts); an env without task types is keyed by the task text; FIFO drops the oldest."""
    acts = {0: ["go to a", "take x", "put x"], 1: ["look", "look"], 2: ["go to b", "take y"], 3: ["buy it"]}
    skill = {2: 7}
    steps = [_step(traj, t, a[t], skill.get(traj)) for t in range(3) for traj, a in acts.items() if t < len(a)]
    task = lambda text: SimpleNamespace(text=text)
    eps = [R.Episode(0, 0, task("put x in b."), "pick", True, 1.0, 3),
           R.Episode(0, 1, task("put x in b."), "pick", False, 0.0, 2),            # lost
           R.Episode(1, 2, task("put y in c."), "pick", True, 1.0, 2, skill=7),    # won with a skill
           R.Episode(1, 3, "buy a red shirt", "", True, 1.0, 1)]                  # no task type
    buf = mine.SuccessBuffer(capacity=2)
    assert buf.add_from_rollout(steps, eps, iteration=4) == 2
    assert [(s.task, s.key, s.actions, s.iteration) for s in buf.items] == [
        ("put x in b.", "pick", acts[0], 4), ("buy a red shirt", "buy a red shirt", ["buy it"], 4)]
    buf.add("t", "pick", ["a"], 5)
    assert len(buf) == 2 and buf.n_added == 3 and buf.items[0].task == "buy a red shirt"
    with pytest.raises(AssertionError, match="trajectory 0"):  # a won episode whose steps are missing
        buf.add_from_rollout(steps[1:], eps, 5)


def test_buffer_sample_round_robin_unmined_recent_short_first():
    """sample covers every key before a second trajectory of any key; within a key: least mined, then most
    recent, then shortest; what it returns is marked, so the next call moves on."""
    buf = mine.SuccessBuffer()
    buf.add("a1", "A", ["x", "y", "z"], 1)
    buf.add("a2", "A", ["x"], 1)
    buf.add("a3", "A", ["x", "y"], 2)
    buf.add("b1", "B", ["x"], 0)
    first = buf.sample(3, random.Random(0))
    assert sorted(s.task for s in first[:2]) == ["a3", "b1"] and first[2].task == "a2"
    assert [s.task for s in buf.sample(10, random.Random(0), key="A")] == ["a1", "a3", "a2"]
    assert [s.mined for s in buf.items] == [1, 2, 2, 1]


# -----------------------------------------------------------------------------
# mining

@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [mine.mining_prompt("a house", f"put a mug in desk {i}.", ["go to desk 1", "take mug 1"]) + "\n" + GOOD
             for i in range(5)]
    return bootstrap.train_tokenizer(texts * 4, 300, str(tmp_path_factory.mktemp("tok")))


TRAJS = [mine.Success("put a mug in desk 1.", "pick", ["go to desk 1", "take mug 1"], 0),
         mine.Success("heat an egg.", "heat", ["go to fridge 1"], 0),
         mine.Success("cool a pan.", "cool", ["go to fridge 1", "open fridge 1", "close fridge 1"], 0)]


def test_mine_random_model_drops_every_answer(tok):
    """A tiny random model writes garbage: nothing parses, every answer is dropped and counted."""
    cfg = M.ModelConfig.from_hf(M.config_dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    policy = M.init_weights(M.Transformer(cfg), seed=0)
    policy.attn_backend = "sdpa"
    kept, dropped = mine.mine(policy, tok, "a house", TRAJS, max_new_tokens=8, temperature=1.0,
                              generator=torch.Generator().manual_seed(0))
    assert kept == [] and dropped == len(TRAJS)
    assert mine.mine(policy, tok, "a house", []) == ([], 0)


def test_mine_parses_answers_in_one_batch(tok, monkeypatch):
    """mine makes one generate call over the chat-templated mining prompts (greedy, EOS stops), decodes each
    row, keeps the answers parse_skill accepts with their own source trajectory and counts the rest."""
    other = GOOD.replace("hot", "cold").replace("microwave", "fridge")
    answers = [GOOD, "When to apply: something\nStrategy: x", other]
    calls = []

    def fake_generate(model, prompts, max_new_tokens, temperature=1.0, stop_ids=(), generator=None, **kw):
        calls.append((prompts, temperature, list(stop_ids)))
        rows = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in answers]
        width = max(map(len, rows))
        tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return M.Generation(tokens, torch.zeros(tokens.shape), mask)

    monkeypatch.setattr(M, "generate", fake_generate)
    kept, dropped = mine.mine(None, tok, "a house", TRAJS)
    assert len(calls) == 1 and calls[0][1] == 0.0 and tok.eos_token_id in calls[0][2]
    assert calls[0][0] == [R.chat_ids(tok, mine.mining_prompt("a house", t.task, t.actions)) for t in TRAJS]
    assert dropped == 1
    assert kept == [(mine.parse_skill(GOOD), TRAJS[0]), (mine.parse_skill(other), TRAJS[2])]


# -----------------------------------------------------------------------------
# paired validation

def test_paired_split_and_group_delta_by_hand():
    """The second half of a group gets the skill; delta_g = mean(skill half) - mean(plain half) of the episode
    scores, per group; odd groups and groups mixing skills are refused."""
    assert mine.paired_split(4) == [False, False, True, True]
    with pytest.raises(AssertionError, match="even group size"):
        mine.paired_split(5)
    assert mine.group_delta([1.0, 1.0, 0.0], [0.0, 1.0, 0.0]) == pytest.approx(1 / 3)
    E = lambda g, score, skill: R.Episode(g, 0, "t", "k", score == 1.0, score, 3, skill)
    eps = [E(0, 0.0, None), E(0, 1.0, None), E(0, 1.0, 5), E(0, 1.0, 5),
           E(1, 1.0, None), E(1, 0.25, None),                                  # a plain group
           E(2, 0.5, None), E(2, 0.0, None), E(2, 0.0, 6), E(2, 0.25, 6)]
    assert mine.paired_deltas(eps) == {0: (5, 0.5), 2: (6, -0.125)}
    with pytest.raises(AssertionError, match="mixes skills"):
        mine.paired_deltas(eps + [E(2, 1.0, 7)])


# -----------------------------------------------------------------------------
# skill bank

def _skill(i):
    return dict(when=f"The task is of kind {'abcdefgh'[i]}.", strategy="Do it well.", steps="one | two | three")


SRC = dict(task="put x in b.", actions=["go to a", "take x"])


def _moves(bank):
    return [(e["skill"], e["from"], e["to"]) for e in bank.events]


def test_lifecycle_by_hand():
    """After n_eval=3 uses: mean > 0 -> active, mean < 0 -> retired (from candidate, and later from active),
    mean exactly 0 stays candidate; nothing moves before 3 uses; every move is an event with its iteration."""
    bank = mine.SkillBank()
    a, b, c = (bank.add(_skill(i), "k", 1, SRC) for i in range(3))
    for d in (1.0, 0.5):
        bank.update(a, d, 2)
    assert bank.skills[a].status == "candidate"
    bank.update(a, 0.0, 3)
    assert bank.skills[a].status == "active" and bank.skills[a].mean_delta == 0.5
    for d in (-1.0, 0.0, 0.0):
        bank.update(b, d, 3)
    for d in (0.0, 0.5, -0.5):
        bank.update(c, d, 3)
    bank.update(a, -1.0, 4)                                  # mean (1.5 - 1) / 4 > 0: still active
    bank.update(a, -1.0, 5)                                  # mean -0.5 / 5 < 0: retired
    assert [bank.skills[i].status for i in (a, b, c)] == ["retired", "retired", "candidate"]
    assert _moves(bank) == [(a, None, "candidate"), (b, None, "candidate"), (c, None, "candidate"),
                            (a, "candidate", "active"), (b, "candidate", "retired"), (a, "active", "retired")]
    assert [e["iteration"] for e in bank.events[3:]] == [3, 3, 5]
    assert bank.counts() == {"candidate": 1, "active": 0, "retired": 2}
    bank.update(b, 5.0, 6)                                   # retired stays retired
    assert bank.skills[b].status == "retired" and len(bank.events) == 6


def test_capacity_evicts_lowest_utility_and_skips_duplicates():
    """A full key (capacity 3) evicts its lowest-utility skill (untried = 0; the oldest on ties) into retired;
    a newcomer is refused when every skill there has a positive mean. Exact duplicates under the same key are
    skipped, retired ones included; the same fields under another key are a new skill."""
    bank = mine.SkillBank(capacity=3)
    a, b, c = (bank.add(_skill(i), "k", 1, SRC) for i in range(3))
    for d in (1.0, 1.0, 1.0):
        bank.update(a, d, 1)
    bank.update(b, -0.5, 1)
    d = bank.add(_skill(3), "k", 2, SRC)
    assert bank.skills[b].status == "retired" and bank.events[-2]["reason"].startswith("evicted")
    e = bank.add(_skill(4), "k", 2, SRC)                     # c and d untried (0): the older, c, goes
    assert bank.skills[c].status == "retired" and bank.skills[d].status == "candidate"
    for i in (d, e):
        bank.update(i, 0.25, 3)
    n = len(bank.skills)
    assert bank.add(_skill(5), "k", 3, SRC) is None and len(bank.skills) == n
    assert bank.add(_skill(0), "k", 3, SRC) is None          # duplicate of an active skill
    assert bank.add(_skill(1), "k", 3, SRC) is None          # duplicate of a retired one
    assert bank.add(_skill(0), "other", 3, SRC) is not None
    assert bank.counts() == {"candidate": 3, "active": 1, "retired": 2}
    assert bank.skills[d].source == [SRC] and bank.skills[d].created == 2


HEAT = dict(when="The task asks for a hot object to be put in a receptacle.", strategy="Heat it first.",
            steps="find it | heat it with the microwave | put it in the target")
LOOK = dict(when="The task asks to examine an object under the desklamp.", strategy="Find the lamp.",
            steps="find the object | take it | use the desklamp")


def test_retrieval_prefers_active_explores_candidates_and_falls_back_lexically():
    """The best active skill of the key, or an under-evaluated candidate with probability p_explore (always when
    there is no active one); an unknown key uses the lexically nearest key's skills, None when nothing is
    similar; retired skills are never returned."""
    bank = mine.SkillBank(p_explore=0.5)
    good, ok, cand = (bank.add(s, "heat", 0, SRC) for s in (HEAT, _skill(1), _skill(2)))
    for d in (1.0, 1.0, 1.0):
        bank.update(good, d, 1)
        bank.update(ok, d / 2, 1)
    rng = random.Random(0)
    got = [bank.retrieve("heat", "heat an egg", rng).id for _ in range(200)]
    assert set(got) == {good, cand} and 60 < got.count(cand) < 140
    for p, want in ((0.0, good), (1.0, cand)):
        bank.p_explore = p
        assert {bank.retrieve("heat", "heat an egg", rng).id for _ in range(20)} == {want}
    assert bank.retrieve("heat", "heat an egg", None, explore=False).id == good  # evaluation: exploit only
    look = bank.add(LOOK, "look_at_obj_in_light", 0, SRC)
    assert {bank.retrieve("look_at_obj_in_light", "x", rng).id for _ in range(20)} == {look}  # no active: explore
    assert bank.retrieve("look_at_obj_in_light", "x", None, explore=False) is None  # a candidate only: none
    assert bank.retrieve("pick_heat_then_place_in_recep", "put a hot apple 1 in fridge 2.", rng).key == "heat"
    assert bank.retrieve("new_type", "examine the book 1 with the desklamp.", rng).id == look
    assert bank.retrieve("new_type", "buy a red shirt under 30 dollars", rng) is None
    for d in (-1.0, -1.0, -1.0):
        bank.update(look, d, 2)
    assert bank.retrieve("look_at_obj_in_light", "examine the book 1 with the desklamp.", rng) is None
    for i in (good, ok, cand):
        for d in (-9.0,) * 3:
            bank.update(i, d, 3)
    assert bank.counts()["retired"] == 4 and bank.retrieve("heat", "heat an egg", rng) is None
    assert mine.SkillBank().retrieve("heat", "heat an egg", rng) is None


def _bank():
    bank = mine.SkillBank(n_eval=2, capacity=2, min_similarity=0.2)
    heat, look = bank.add(HEAT, "heat", 1, SRC), bank.add(LOOK, "look", 1, SRC)
    for d in (0.1, 0.7):
        bank.update(heat, d, 2)
    bank.update(look, -0.3, 2)
    bank.update(look, -0.2, 3)
    for i in range(3):                   # one free place at capacity 2: each evicts the one before
        bank.add(_skill(i), "heat", 4, SRC)
    return bank


def test_save_load_round_trip_atomic_and_corrupt_files(tmp_path):
    """save writes indented JSON through path.tmp + os.replace (no .tmp left); load gives back the same config,
    skills, deltas, events and id counter (saving again gives the same bytes); a corrupt or malformed file
    raises BankError (a ValueError) naming the file."""
    bank, path = _bank(), str(tmp_path / "bank.json")
    bank.save(path)
    assert os.listdir(tmp_path) == ["bank.json"] and open(path).read().startswith("{\n ")
    back = mine.SkillBank.load(path)
    assert back.state() == bank.state() and back.n_eval == 2 and back.min_similarity == 0.2
    assert back.skills[0].deltas == [0.1, 0.7] and back.add(_skill(5), "x", 4, SRC) == bank.next_id
    back2, p2 = mine.SkillBank.load(path), str(tmp_path / "again.json")
    back2.save(p2)
    assert open(p2).read() == open(path).read()
    state = json.load(open(path))
    bad_status = dict(state, skills=[dict(state["skills"][0], status="great")])
    for name, text in (("cut.json", open(path).read()[:-40]), ("list.json", "[]"),
                       ("nokeys.json", json.dumps(dict(state, skills=[{"id": 0}]))),
                       ("status.json", json.dumps(bad_status))):
        open(tmp_path / name, "w").write(text)
        with pytest.raises(mine.BankError, match=name):
            mine.SkillBank.load(str(tmp_path / name))
    assert issubclass(mine.BankError, ValueError)


def test_markdown_lists_every_skill_by_key():
    """The Markdown export has a section per key and, for every non-retired skill, its status, uses, mean delta
    and its three fields."""
    bank = _bank()
    md = bank.markdown()
    assert "## heat" in md and "## look" in md
    for s in bank.skills.values():
        if s.status != "retired":
            assert f"### Skill {s.id}: {s.status}, {s.uses} uses, mean delta {s.mean_delta:+.3f}" in md
            assert all(f"- {label} {s.fields[k]}" in md for k, label in mine.FIELDS)
    assert "### Skill 0: active, 2 uses, mean delta +0.400" in md and bank.counts() == dict(candidate=1, active=1,
                                                                                             retired=3)
