"""Bad model output never crashes projection or the environments: thousands of random outputs,
random token ids decoded by a real tokenizer and random unicode / bytes strings, through rollout.project and
env.step of every registered env. An env that does raise: rollout's env_errors ("raise" names env, task, step and
action; "fail" ends that episode as failed and leaves the others exactly as they were)."""

import random
from dataclasses import replace

import pytest
import torch
from transformers import AutoTokenizer

import envs
import model as M
import rollout as R
from test_env_contract import suite as contract_suite  # (skips an env whose engine is not installed)
from test_siri import policy_dir  # noqa: F401  (the tiny bootstrap policy fixture)


def _random_outputs(n, seed=0):
    rng = random.Random(seed)
    pieces = ["<action>", "</action>", "<think>", "</think>", "go to", "take", "click[", "]", "search[", "buy now",
              "\x00", "\ufffd", "漢字", "é", "\n", " ", "1", "fridge 1", "<|im_end|>"]
    out = ["", " ", "<action></action>", "<action>" * 3, "x" * 10_000, "<action>" + "a" * 5_000 + "</action>",
           "</action>go<action>", "<action>click[buy now]</action><action>look</action>"]
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:  # tag soup
            out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
        elif kind < 0.7:  # arbitrary unicode code points (surrogates excluded)
            out.append("".join(chr(rng.choice([rng.randint(0, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                               for _ in range(rng.randint(0, 60))))
        else:  # binary garbage decoded leniently, as a tokenizer's byte fallback would
            out.append(bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 80))).decode("utf-8", "replace"))
    return out


def test_projection_total_on_garbage():
    """Every output projects to (str, bool): with both tags in order, the text between them (valid unless it
    holds CJK characters, as the GiGPO code); otherwise invalid, with at most the last 30 characters sent."""
    for text in _random_outputs(3000):
        action, valid = R.project(text)
        assert isinstance(action, str) and isinstance(valid, bool)
        low = text.lower()
        a, b = low.find("<action>"), low.find("</action>")
        if -1 < a < b:
            assert action == low[a + len("<action>"):b].strip() and valid == (R._CJK.search(text) is None)
        else:
            assert not valid and action == low[-30:]


@pytest.mark.parametrize("name", sorted(envs.REGISTRY))
def test_envs_survive_garbage_actions(name):
    """Projected garbage stepped through every registered env: no exception, a string observation, no reward
    for nonsense, and the episode ends at the env's step cap at the latest."""
    outputs = _random_outputs(1500, seed=1)
    suite = contract_suite(name, n=5)
    env, k = suite.new_env(), 0
    for task in suite.tasks:
        obs, done, steps = env.reset(task), False, 0
        while not done:
            action, _ = R.project(outputs[k % len(outputs)])
            k += 1
            obs, reward, done, info = env.step(action)
            steps += 1
            assert isinstance(obs.text, str) and steps <= suite.max_steps
            if not info["action_admissible"]:
                assert reward == 0
    assert k > 60


# -----------------------------------------------------------------------------
# env_errors: an environment that raises


def flaky_suite(broken, at=None, end=False):
    """household whose env instances `broken` (numbered in creation order: rollout makes env i of its batch i-th)
    raise at reset (at None) or at step `at` (0-based); end=True ends those episodes at that step instead, failed,
    without an exception: the lockstep batch an env_errors="fail" run must reproduce for the other envs."""
    base = envs.make("household", "train", n_tasks=2, seed=0)
    made = []  # every env instance, to read the actions each was sent

    class Env(base.env_cls):
        def __init__(self):
            super().__init__()
            self.broken, self.n, self.actions = len(made) in broken, 0, []
            made.append(self)

        def reset(self, task):
            if self.broken and at is None:
                raise KeyError("floor plan 99")
            return super().reset(task)

        def step(self, action):
            self.actions.append(action)
            self.n += 1
            if self.broken and self.n - 1 == at:
                if not end:
                    raise ValueError("bad command\nsecond line")
                obs, _, _, info = super().step(action)
                return obs, 0.0, True, dict(info, won=False, score=0.0)
            return super().step(action)

    suite = replace(base, env_cls=Env)
    suite.made = made
    return suite


@pytest.fixture(scope="module")
def agent(policy_dir):  # noqa: F811
    tok = AutoTokenizer.from_pretrained(policy_dir)
    return M.load(policy_dir), tok


def play(agent, suite, **kw):
    model, tok = agent
    return R.rollout(model, tok, R.Prompter(tok, suite.description), suite, suite.tasks, 3,
                     R.Sampling(max_new_tokens=6), generator=torch.Generator().manual_seed(0), max_steps=3, **kw)


def test_env_error_raise_names_env_task_step_action(agent):
    """The default: a one-line RuntimeError with the env's name, the task as the agent read it, the step, the
    action and the original exception (chained)."""
    suite = flaky_suite({4}, at=1)
    with pytest.raises(RuntimeError) as exc:
        play(agent, suite)
    msg, env = str(exc.value), suite.made[4]
    assert "\n" not in msg and "'household'" in msg and suite.tasks[1].text in msg
    assert f"step 1 on action {env.actions[1]!r}" in msg and "ValueError: bad command second line" in msg
    assert isinstance(exc.value.__cause__, ValueError)
    with pytest.raises(RuntimeError, match=r"'household' raised at reset of task \"HouseholdTask\(.*KeyError: 'floor"):
        play(agent, flaky_suite({0}))
    with pytest.raises(ValueError, match="env_errors"):
        play(agent, flaky_suite(set()), env_errors="skip")


def test_env_error_fail_ends_only_that_episode(agent):
    """"fail": the broken envs' episodes end failed at the step that raised (still a sample, reward 0) and are
    marked env_error; everything else (every sample, every other episode) equals a run in which those envs ended
    normally at that step, from the same generator seed."""
    steps, eps, st = play(agent, flaky_suite({1, 4}, at=1), env_errors="fail")
    ref_steps, ref_eps, ref_st = play(agent, flaky_suite({1, 4}, at=1, end=True))
    assert st["env_errors"] == 2 and ref_st["env_errors"] == 0
    assert [e.traj for e in eps if e.env_error] == [1, 4]
    assert all(not eps[i].won and eps[i].score == 0 and eps[i].steps == 2 for i in (1, 4))
    assert steps == ref_steps and [replace(e, env_error=False) for e in eps] == ref_eps
    assert {(s.traj, s.step) for s in steps if s.traj in (1, 4)} == {(1, 0), (1, 1), (4, 0), (4, 1)}


def test_env_error_fail_at_reset(agent):
    """A reset that raises: a failed episode of 0 steps that still carries the task's text and type (what
    evaluate tallies by); the other envs play on. evaluate passes env_errors through."""
    suite = flaky_suite({2})
    steps, eps, st = play(agent, suite, env_errors="fail")
    task = suite.tasks[0]
    assert st["env_errors"] == 1 and eps[2].env_error and not eps[2].won and eps[2].steps == 0
    assert (eps[2].task_type, eps[2].task_text) == (task.task_type, task.text)
    assert not any(s.traj == 2 for s in steps) and all(e.steps == 3 for e in eps if not e.env_error)
    model, tok = agent
    suite = flaky_suite({0})
    r = R.evaluate(model, tok, R.Prompter(tok, suite.description), suite, max_steps=2, env_errors="fail")
    assert r["n"] == 2 and r["success"] == 0 and sum(r["by_type_n"].values()) == 2
    with pytest.raises(RuntimeError, match="raised at reset"):
        R.evaluate(model, tok, R.Prompter(tok, suite.description), flaky_suite({0}), max_steps=2)
