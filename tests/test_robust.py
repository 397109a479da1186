"""Bad model output never crashes projection or the environments ([5/7]): thousands of random outputs,
random token ids decoded by a real tokenizer and random unicode / bytes strings, through rollout.project and
env.step of both built-in envs."""

import random

import envs
import rollout as R


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
    holds CJK characters, SPEC 4 / the GiGPO code); otherwise invalid, with at most the last 30 characters sent."""
    for text in _random_outputs(3000):
        action, valid = R.project(text)
        assert isinstance(action, str) and isinstance(valid, bool)
        low = text.lower()
        a, b = low.find("<action>"), low.find("</action>")
        if -1 < a < b:
            assert action == low[a + len("<action>"):b].strip() and valid == (R._CJK.search(text) is None)
        else:
            assert not valid and action == low[-30:]


def test_envs_survive_garbage_actions():
    """Projected garbage stepped through household and shop: no exception, a string observation, no reward
    for nonsense, and the episode ends at the step cap at the latest."""
    outputs = _random_outputs(1500, seed=1)
    for name in ("household", "shop"):
        suite = envs.make(name, "train", n_tasks=20, seed=0)
        env, k = suite.new_env(), 0
        for task in suite.tasks:
            obs, done, steps = env.reset(task), False, 0
            while not done:
                action, _ = R.project(outputs[k % len(outputs)])
                k += 1
                obs, reward, done, info = env.step(action)
                steps += 1
                assert isinstance(obs.text, str) and steps <= 50
                if not info.get("action_admissible", True):
                    assert reward == 0
        assert k > 100
