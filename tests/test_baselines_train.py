"""train.py --algo d2skill | reskill end to end (tiny policy, CPU): the baseline's skills reach the rollout's
prompts, its state rides in every checkpoint and --resume restores it, its metrics and events are logged, and
--eval-with-skills evaluates with its bank / skill set."""

import json
import os

import pytest

import bootstrap
import mine
import train

TINY = dict(demos=12, sft_steps=3, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, batch=8)
SKILL = dict(when="The task asks you to put an object somewhere.", strategy="Find it, take it, put it.",
             steps="search | take it | put it")


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return bootstrap.build(str(tmp_path_factory.mktemp("policy")), quiet=True, **TINY)


def flags(policy_dir, out, algo, iters):
    return ["--model", policy_dir, "--out", out, "--algo", algo, "--iters", str(iters), "--groups", "2",
            "--group-size", "2", "--eval-tasks", "2", "--final-eval-tasks", "2", "--max-new-tokens", "8",
            "--max-steps", "3", "--eval-max-steps", "3", "--save-every", "1", "--lr", "1e-3", "--eval-with-skills"]


def seed_state(out, algo, policy_dir):
    """Put one hand-written skill into the run's checkpointed state (as if the policy had written it), so the
    resumed iteration must show it in its prompts."""
    a = train.get_args(flags(policy_dir, out, algo, 2))
    path = os.path.join(out, "ckpt", "baseline.json")
    b = train.BASELINES[algo].from_state(a, "d", json.load(open(path)))
    if algo == "d2skill":
        b.add("task", SKILL, "pick_and_place_simple", "put a mug in the cabinet", "", 1, "test")
    else:  # an accepted one-skill set that fires on every task type
        b.old = [dict(id=i, key=k, trigger="always", created=1, **SKILL) for i, k in enumerate(sorted(bootstrap.HOUSEHOLD_TYPES))]
    json.dump(b.state(), open(path, "w"))


@pytest.mark.parametrize("algo", ["d2skill", "reskill"])
def test_baseline_runs_checkpoints_and_resumes(policy_dir, tmp_path, algo, monkeypatch):
    out = str(tmp_path / algo)
    train.main(flags(policy_dir, out, algo, 1))
    assert os.path.exists(os.path.join(out, "ckpt", "baseline.json")) and os.path.exists(os.path.join(out, "bank.md"))
    seed_state(out, algo, policy_dir)
    json_args = json.load(open(os.path.join(out, "args.json")))
    json_args["iters"] = 2
    json.dump(json_args, open(os.path.join(out, "args.json"), "w"))
    seen = []
    real = train.R.rollout

    def spy(*args, **kw):  # records every prompt's skill as the rollout asks for it
        skills = kw.get("skills") or [None]
        seen.extend(s for s in skills if s is not None)
        return real(*args, **kw)
    monkeypatch.setattr(train.R, "rollout", spy)
    train.main(flags(policy_dir, out, algo, 2) + ["--resume"])
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    its = [r for r in rows if "success" in r and not r.get("eval")]
    assert [r["iter"] for r in its] == [1, 2]
    key = "task_skills" if algo == "d2skill" else "active"
    assert its[0][key] == 0 and its[1][key] >= 1  # the restored state, counted in the log
    assert seen and all(callable(s) for s in seen)  # per-step callables; they returned the skill block:
    assert any(f(0, type("O", (), dict(text="", task="put a mug in the cabinet"))(), [])[0] for f in seen)
    assert any(r.get("with_skills") for r in rows if r.get("eval"))
    assert "Find it, take it, put it." in open(os.path.join(out, "bank.md")).read()
