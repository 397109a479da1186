"""train.py's command line and inputs: --help stays short, --bank starts SIRI from a given skill bank, --train-types
restricts the training pool, bad data or bank paths end the run in one line before any model is loaded, and a
run finishes without matplotlib (a note instead of the curve). CPU, the tiny policy of test_siri.py."""

import json
import os
import subprocess
import sys

import pytest

import bootstrap
import config
import envs
import mine
import model as M
import train
from test_siri import policy_dir  # noqa: F401  (the tiny bootstrap policy fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOUSEHOLD_TYPES = sorted({t.task_type for t in envs.make("household", "train", n_tasks=60).tasks})


def run_flags(policy, out, *extra):
    return ["--model", policy, "--out", out, "--iters", "1", "--groups", "2", "--group-size", "4",
            "--max-steps", "2", "--max-new-tokens", "6", "--eval-tasks", "1", "--final-eval-tasks", "1",
            "--eval-max-steps", "1", "--keep-uniform-groups", "--lr", "1e-3", *extra]


def help_flags(*argv):
    try:
        config.get_args([*argv, "--help"] if "--help-all" not in argv else list(argv))
    except SystemExit:
        pass


def test_help_is_short_and_help_all_lists_everything(capsys):
    """--help lists at most 48 flags, the baselines' only with their --algo; --help-all lists every flag the parser
    takes, and the ones --help shows by name only still parse."""
    def options(text):
        return {w for line in text.splitlines() if line.startswith("  -") for w in line.split() if w.startswith("--")}
    help_flags()
    short = options(capsys.readouterr().out)
    assert len(short) <= 48 and "--help" in short and not any(f.startswith(("--d2-", "--rs-")) for f in short)
    help_flags("--algo", "d2skill")
    d2 = options(capsys.readouterr().out)
    assert {"--d2-lambda", "--d2-top-k"} <= d2 and not any(f.startswith("--rs-") for f in d2)
    help_flags("--help-all")
    full = options(capsys.readouterr().out)
    assert set(config.ADVANCED) <= full - short and "--rs-min-iters" in full and "--d2-lambda" in full
    a = train.get_args(["--warmup", "3", "--weighting", "traj", "--save-every", "2", "--d2-top-k", "2"])
    assert (a.warmup, a.weighting, a.save_every, a.d2_top_k) == (3, "traj", 2, 2)


@pytest.fixture
def no_model(monkeypatch):
    """Loading or building any model is an error: what the early checks must finish before."""
    def refuse(*args, **kw):
        raise AssertionError("a model was loaded before the inputs were checked")
    monkeypatch.setattr(M, "load", refuse)
    monkeypatch.setattr(bootstrap, "build", refuse)


def exit_message(argv):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    msg = str(e.value.code)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_data_errors_end_the_run_in_one_line_before_any_model(tmp_path, no_model):
    """A missing WebShop data dir, a WebShop file that is not JSON, a missing or broken --bank file: one line
    naming the file, raised before the embedded policy is built (no --model) or any checkpoint loaded."""
    out = str(tmp_path / "run")
    msg = exit_message(["--env", "shop", "--webshop-data", str(tmp_path / "nowhere"), "--out", out])
    assert str(tmp_path / "nowhere") in msg and "no such directory" in msg
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "items_shuffle_1000.json").write_text("{broken")
    (tmp_path / "data" / "items_ins_v2_1000.json").write_text("{}")
    msg = exit_message(["--env", "shop", "--webshop-data", str(tmp_path / "data"), "--out", out])
    assert "items_shuffle_1000.json" in msg and "JSON" in msg
    (tmp_path / "bank.json").write_text('{"skills": 3}')
    msg = exit_message(["--bank", str(tmp_path / "bank.json"), "--out", out])
    assert str(tmp_path / "bank.json") in msg and "not a valid skill bank" in msg
    with pytest.raises(SystemExit):  # argparse: exit status 2, the message on stderr
        train.get_args(["--bank", str(tmp_path / "missing.json")])
    assert not os.path.exists(os.path.join(out, "policy"))


def test_alfworld_data_error_is_one_line(tmp_path, no_model):
    """A missing ALFWorld data dir (or, without ALFWorld's engine installed, the engine itself) is one line too."""
    msg = exit_message(["--env", "alfworld", "--alfworld-data", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    try:
        import textworld  # noqa: F401
        assert str(tmp_path / "nowhere") in msg
    except ImportError:
        assert "textworld" in msg


def reference_bank(path):
    """bootstrap.py's reference skill for every household task type, each already active (N_eval uses of +1)."""
    bank = mine.SkillBank()
    for k in HOUSEHOLD_TYPES:
        sid = bank.add(bootstrap.reference_skill(k), k, 0, dict(task="reference", actions=[]))
        for _ in range(bank.n_eval):
            bank.update(sid, 1.0, 0)
    bank.save(path)
    return bank


@pytest.mark.parametrize("lambda_max", ["1.0", "0"])
def test_bank_starts_siri_from_given_skills(policy_dir, tmp_path, lambda_max):  # noqa: F811
    """--bank with --phase2-frac 1.0: iteration 1 is phase 2 and every group's skill half plays a skill of the
    given bank (already active); lambda is lambda_max / ramp, or 0 with --lambda-max 0 (the control: no L_int)."""
    bank = reference_bank(str(tmp_path / "bank.json"))
    out = str(tmp_path / "run")
    train.main(run_flags(policy_dir, out, "--algo", "siri", "--bank", str(tmp_path / "bank.json"),
                         "--phase2-frac", "1.0", "--lambda-max", lambda_max))
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    it = [r for r in rows if "phase" in r and "event" not in r][0]
    assert it["phase"] == 2 and it["active"] == len(HOUSEHOLD_TYPES) and it["candidate"] == 0
    assert it["skill_groups"] == 2 and it["skill_episodes"] == 4
    assert it["lambda"] == pytest.approx(float(lambda_max) / 2)
    assert [(r["from"], r["to"]) for r in rows if r.get("event") == "phase"] == [(0, 2)]
    saved = mine.SkillBank.load(os.path.join(out, "ckpt", "bank.json"))
    assert set(saved.skills) == set(bank.skills) and sum(s.uses for s in saved.skills.values()) == 3 * 6 + 2


def test_train_types_restrict_the_pool(policy_dir, tmp_path, monkeypatch):  # noqa: F811
    """--train-types keeps only training tasks of those types (evaluation keeps all); a type with no task is a
    one-line error before any model is loaded."""
    seen = []
    real = train.R.rollout

    def spy(model, tok, prompter, suite, tasks, n, *args, **kw):
        if n > 1:  # a training rollout
            seen.extend(t.task_type for t in tasks)
        return real(model, tok, prompter, suite, tasks, n, *args, **kw)
    monkeypatch.setattr(train.R, "rollout", spy)
    types = HOUSEHOLD_TYPES[:2]
    train.main(run_flags(policy_dir, str(tmp_path / "run"), "--algo", "gigpo", "--iters", "3",
                         "--train-types", ",".join(types)))
    assert len(seen) == 6 and set(seen) <= set(types)
    monkeypatch.setattr(M, "load", lambda *a, **kw: pytest.fail("model loaded before the check"))
    msg = exit_message(run_flags(policy_dir, str(tmp_path / "bad"), "--train-types", f"{types[0]},no_such_type"))
    assert "--train-types" in msg and "no_such_type" in msg and types[0] not in msg.split("(")[0]


def test_training_needs_no_matplotlib(policy_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    """train.py imports neither report.py nor matplotlib to train, and a run without matplotlib ends with a
    one-line note instead of curve.png."""
    code = "import sys, train; print('report' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    run = str(tmp_path / "run")
    train.main(run_flags(policy_dir, run, "--algo", "gigpo"))
    assert "no learning curve: matplotlib is not installed" in capsys.readouterr().out
    assert os.path.exists(os.path.join(run, "final.json")) and not os.path.exists(os.path.join(run, "curve.png"))
