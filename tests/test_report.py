"""report.py: the table over seeds, a run's start/end table and its learning-curve PNG, from metrics files."""

import json
import os

import pytest

import model as M
import report
import train


def _run(d, boot, final, phases=()):
    """A fake finished train.py run: eval rows at iterations 0 and 3, iteration rows, phase events, final.json."""
    os.makedirs(d)
    ev = lambda it, x: {"iter": it, "eval": True, **{s: {"success": x[k], "n": 10} for k, s in enumerate(report.SPLITS)}}
    rows = [ev(0, boot)] + [{"iter": i, "success": 0.1 * i, "iter_s": 10.0 * i + boot[0] * 100} for i in (1, 2, 3)]
    rows += [{"event": "phase", "iter": it, "from": to - 1, "to": to} for it, to in phases] + [ev(3, final)]
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    json.dump(rows[-1], open(os.path.join(d, "final.json"), "w"))
    return rows


def test_table_mean_and_spread_over_seeds(tmp_path):
    out = str(tmp_path)
    _run(f"{out}/gigpo_s0", (0.2, 0.3), (0.4, 0.5))
    _run(f"{out}/gigpo_s1", (0.4, 0.1), (0.6, 0.1))
    _run(f"{out}/siri_s0", (0.2, 0.3), (0.5, 0.5))  # seed 1 of siri unfinished: left out, n says so
    a = report.get_args(["--out", out, "--algos", "gigpo", "siri", "--seeds", "0", "1", "--dry-run"])
    rows = report.results(a)
    assert rows["bootstrap"]["eval_seen"] == pytest.approx([0.2, 0.4])  # one value per seed, runs averaged
    assert rows["gigpo"]["eval_unseen"] == pytest.approx([0.5, 0.1])
    text = report.table(rows)
    assert "| gigpo | 0.500 +- 0.100 (n=2) | 0.300 +- 0.200 (n=2) | 50 |" in text  # s / iteration: (40 + 60) / 2
    assert "| siri | 0.500 +- 0.000 (n=1) | 0.500 +- 0.000 (n=1) | 40 |" in text
    assert text.splitlines()[2].startswith("| bootstrap | 0.300 +- 0.100 (n=2)")


def test_cost_table_means_per_run_then_over_seeds(tmp_path):
    out = str(tmp_path)
    for seed, x in ((0, 1.0), (1, 3.0)):
        _run(f"{out}/d2skill_s{seed}", (0.2, 0.3), (0.4, 0.5))
        with open(f"{out}/d2skill_s{seed}/metrics.jsonl", "w") as f:  # iterations with every cost logged
            for i in (1, 2):
                f.write(json.dumps({"iter": i, "iter_s": 10 * x * i, "gen_s": x * i, "train_s": 2.0, "skill_s": 0.5,
                                    "gen_tok_s": 100.0, "train_tok_s": 50.0 * i}) + "\n")
    _run(f"{out}/gigpo_s0", (0.2, 0.3), (0.4, 0.5))  # no cost columns logged: only its s / iteration
    a = report.get_args(["--out", out, "--algos", "d2skill", "gigpo", "--seeds", "0", "1", "--dry-run"])
    c = report.costs(a)
    assert c["d2skill"]["gen_tok"] == pytest.approx([150.0, 450.0])  # seed 0: (100 x 1 + 100 x 2) / 2
    assert c["d2skill"]["train_tok"] == pytest.approx([150.0, 150.0])  # (50 x 2 + 100 x 2) / 2
    assert set(c["gigpo"]) == {"iter_s"}
    text = report.cost_table(c)
    assert "| d2skill | 30.00 | 3.00 | 2.00 | 0.50 | 300 | 150 |" in text  # iter_s seed means 15 (x=1), 45 (x=3)
    assert "| gigpo | 40.00 | - | - | - | - | - |" in text  # the fake run's iter_s: 10 i + 20, i = 1..3


def test_train_args_pass_through_after_double_dash():
    a = report.get_args(["--seeds", "3", "--", "--model", "m", "--iters", "2"])
    assert a.seeds == [3] and a.train_args == ["--model", "m", "--iters", "2"]


def test_run_table_and_learning_curve(tmp_path):
    rows = _run(str(tmp_path / "r"), (0.25, 0.5), (0.75, 0.5), phases=[(2, 1), (3, 2)])
    text = report.run_table(rows)
    assert "| start (iteration 0) | 0.250 (10 tasks) | 0.500 (10 tasks) |" in text
    assert "| end (iteration 3) | 0.750 (10 tasks) | 0.500 (10 tasks) |" in text
    middle = dict(rows[0], iter=2)  # a periodic evaluation, and one with skills after the final one
    skills = dict(rows[-1], with_skills=True)
    lines = report.run_table(rows[:-1] + [middle, rows[-1], skills]).splitlines()
    assert [x.split(" |")[0] for x in lines[2:]] == ["| start (iteration 0)", "| end (iteration 3)",
                                                    "| end, with skills in the prompt (siri: best active)"]
    png = str(tmp_path / "curve.png")
    report.learning_curve(rows, png, "t")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_quick_sets_defaults_that_explicit_flags_override():
    a = train.get_args(["--quick"])
    assert (a.iters, a.groups, a.group_size, a.out) == (4, 4, 4, "runs/quick")
    assert train.get_args(["--quick", "--iters", "7"]).iters == 7
    assert train.get_args([]).iters != 4


def test_lr_default_depends_on_the_policy(tmp_path):
    assert train.get_args([]).lr == 5e-5  # the embedded policy, built by bootstrap.py
    (tmp_path / "bootstrap.json").write_text("{}")
    (tmp_path / "hf").mkdir()
    for d in (tmp_path, tmp_path / "hf"):  # get_args checks that --model holds a config model.py supports
        (d / "config.json").write_text(json.dumps(M.config_dict("llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                                                                 num_hidden_layers=1, num_attention_heads=2)))
    assert train.get_args(["--model", str(tmp_path)]).lr == 5e-5  # a bootstrap.py policy passed as --model
    assert train.get_args(["--model", str(tmp_path / "hf")]).lr == 1e-6  # any other checkpoint
    assert train.get_args(["--model", str(tmp_path / "hf"), "--lr", "3e-4"]).lr == 3e-4
