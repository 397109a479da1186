"""rollout.py: prompts, the skill block, action projection, lockstep rollouts, evaluation; and a short
train.py run end to end (tiny policy built by bootstrap.py, CPU)."""

import json
import os

import pytest
import torch
from transformers import AutoTokenizer

import bootstrap
import envs
import model as M
import rollout as R

TINY = dict(demos=12, sft_steps=3, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, batch=8)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return bootstrap.build(str(tmp_path_factory.mktemp("policy")), quiet=True, **TINY)


@pytest.fixture(scope="module")
def tok(policy_dir):
    return AutoTokenizer.from_pretrained(policy_dir)


def test_embedded_tokenizer_survives_autotokenizer(tmp_path):
    """The embedded tokenizer gives the same ids in memory and when AutoTokenizer loads it beside the embedded
    policy's config.json (with ENTITY_SPLIT numbered entities are single tokens, by default word and number
    are two). Beside a qwen2 config.json transformers 5 would
    rebuild it as Qwen2Tokenizer with Qwen2's digit-by-digit pre-tokenization (why the policy is a llama)."""
    texts = ["You arrive at countertop 1. On the countertop 1, you see a knife 12.", "<action>go to desk 1</action>"]
    words = bootstrap.train_tokenizer(texts * 20, 300, str(tmp_path / "words"))  # the default: word, number
    assert words.tokenize(" countertop 1") == words.tokenize(" countertop") + words.tokenize(" 1")
    tok = bootstrap.train_tokenizer(texts * 20, 300, str(tmp_path), bootstrap.ENTITY_SPLIT)
    assert tok.tokenize(" countertop 1") == [tok.tokenize(" countertop 1")[0]]
    json.dump(M.config_dict(bootstrap.ARCH), open(tmp_path / "config.json", "w"))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    for t in texts + ["go to cabinet 10 ünï 冰箱 \n\n  x", ""]:
        assert tok(t, add_special_tokens=False)["input_ids"] == loaded(t, add_special_tokens=False)["input_ids"]
        assert loaded.decode(loaded(t, add_special_tokens=False)["input_ids"]) == t
    json.dump(M.config_dict("qwen2"), open(tmp_path / "config.json", "w"))
    qwen = AutoTokenizer.from_pretrained(str(tmp_path))
    assert qwen(texts[0])["input_ids"] != tok(texts[0])["input_ids"]


@pytest.mark.parametrize("script", ["train.py", "bootstrap.py", "bench.py", "bench_envs.py"])
def test_help_explains_every_flag(script):
    """--help works and every option has a help text."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    lines = out.stdout[out.stdout.index("options:"):].splitlines()
    n_opts = 0
    for k, line in enumerate(lines):
        if line.lstrip().startswith("-") and not line.lstrip().startswith("-h"):
            n_opts += 1
            same_line = "  " in line.strip()  # "--flag VALUE   help text"
            next_line = k + 1 < len(lines) and lines[k + 1].startswith(" " * 10) and not lines[k + 1].lstrip().startswith("-")
            assert same_line or next_line, f"{script}: no help for {line.strip()}"
    assert n_opts >= 2


def test_projection_rules():
    """The protocol's projection (docs/algorithm.md): lowercase, first <action>..</action>, missing/misordered tags invalid with the last 30 characters
    sent; think format also needs think tags; CJK characters make it invalid; inadmissible but well-formed is valid."""
    assert R.project("<action>Go To Fridge 1</action>") == ("go to fridge 1", True)
    assert R.project("blah <action> look </action> <action>inventory</action>") == ("look", True)
    text = "I would like to go to the fridge now please"
    assert R.project(text) == (text.lower()[-30:], False)
    assert R.project("</action>go<action>")[1] is False
    assert R.project("<action>go to moon 1</action>") == ("go to moon 1", True)
    assert R.project("<action>look</action>", think=True) == ("look", False)
    assert R.project("<think>ok</think><action>look</action>", think=True) == ("look", True)
    assert R.project("<action>look 冰箱</action>")[1] is False
    assert R.project("") == ("", False)


def test_prompt_follows_spec_and_skill_block_splices(tok):
    """The prompt carries task, step count, history, observation, admissible actions and the format line
    through the chat template; with a skill the ids are the plain ids with exactly the skill block inserted."""
    p = R.Prompter(tok, "the ALFRED Embodied Environment", history=2)
    past = [("obs one", "go to desk 1"), ("obs two", "open drawer 1"), ("obs three", "look")]
    text = p.text("put a mug in desk.", 3, past, "You arrive at desk 1.", ("look", "inventory"))
    for want in ("You are an expert agent operating in the ALFRED Embodied Environment. Your task is to: put a mug in desk.\n",
                 "Prior to this step you have taken 3 step(s).", "The most recent 2 observations",
                 "[Observation 2: 'obs two', Action 2: 'open drawer 1']", "[Observation 3: 'obs three', Action 3: 'look']",
                 "You are now at step 4 and your current observation is: You arrive at desk 1.",
                 "Your admissible actions are: [look, inventory].", "<action></action>"):
        assert want in text
    assert "obs one" not in text and "desk.." not in text
    plain = p("put a mug in desk.", 3, past, "You arrive at desk 1.", ("look", "inventory"))
    skill = R.format_skill(dict(when="w", strategy="s", steps="a | b | c"))
    with_skill = p("put a mug in desk.", 3, past, "You arrive at desk 1.", ("look", "inventory"), skill=skill)
    block = tok(skill, add_special_tokens=False)["input_ids"]
    cut = next(i for i in range(len(plain)) if plain[i] != with_skill[i])
    assert with_skill[:cut] + with_skill[cut + len(block):] == plain
    assert with_skill[cut:cut + len(block)] == block
    assert "Your task is to" in tok.decode(plain[:cut]) and "Prior to this step" in tok.decode(plain[cut:])
    assert tok.decode(plain).startswith("<|im_start|>user\n") and tok.decode(plain).endswith("<|im_start|>assistant\n")


def test_rollout_samples_and_groups(policy_dir, tok):
    """G x N envs step in lockstep: every step sample carries its fields consistently; envs of a group share the
    start anchor; rewards are 10 x won on the last step only; log-probs match rescoring; finished envs stop."""
    policy = M.load(policy_dir)
    suite = envs.make("household", "train", n_tasks=10, seed=0)
    p = R.Prompter(tok, suite.description)
    steps, eps, st = R.rollout(policy, tok, p, suite, suite.tasks[:3], 2, R.Sampling(max_new_tokens=12),
                               generator=torch.Generator().manual_seed(0), traj_base=100, group_base=10)
    assert len(eps) == 6 and {e.group for e in eps} == {10, 11, 12} and {e.traj for e in eps} == set(range(100, 106))
    for e in eps:
        mine = sorted((s for s in steps if s.traj == e.traj), key=lambda s: s.step)
        assert [s.step for s in mine] == list(range(e.steps)) and all(s.group == e.group for s in mine)
        assert all(s.reward == 0 for s in mine[:-1]) and mine[-1].reward == (10.0 if e.won else 0.0)
        assert e.steps == 50 or e.won
    firsts = {}
    for s in steps:
        if s.step == 0:
            firsts.setdefault(s.group, set()).add(s.anchor)
    assert all(len(v) == 1 for v in firsts.values())
    sub = steps[:8]
    logp, _ = M.score(policy, [s.prompt for s in sub], [s.response for s in sub])
    for k, s in enumerate(sub):
        torch.testing.assert_close(logp[k, :len(s.response)], torch.tensor(s.logprobs), atol=1e-4, rtol=0)
    assert st["gen_tokens"] == sum(len(s.response) for s in steps)


def test_max_steps_cuts_episodes(policy_dir, tok):
    """max_steps cuts episodes like the env's own cap: no env steps past it, truncated flagged, no reward."""
    policy = M.load(policy_dir)
    suite = envs.make("household", "train", n_tasks=4, seed=0)
    steps, eps, _ = R.rollout(policy, tok, R.Prompter(tok, suite.description), suite, suite.tasks[:2], 2,
                              R.Sampling(max_new_tokens=12), generator=torch.Generator().manual_seed(1), max_steps=3)
    assert max(s.step for s in steps) <= 2 and all(e.steps <= 3 for e in eps)
    assert all(e.won or (e.truncated and e.steps == 3) for e in eps)


def test_per_step_skill_callables(policy_dir, tok):
    """A callable skill entry is asked at every step with (t, obs, past): its block goes into that step's prompt
    and its id onto that Step; plain entries stay plain; the Episode keeps its skill_ids entry."""
    policy = M.load(policy_dir)
    suite = envs.make("household", "train", n_tasks=4, seed=0)
    p = R.Prompter(tok, suite.description)
    block = R.format_skill(dict(when="Always.", strategy="Look first.", steps="look | go | take"))
    calls = []

    def fn(t, obs, past):
        calls.append((t, obs.task, len(past)))
        return (block, f"s{t}") if t % 2 == 0 else (None, None)

    steps, eps, _ = R.rollout(policy, tok, p, suite, suite.tasks[:1], 2, R.Sampling(max_new_tokens=12),
                              generator=torch.Generator().manual_seed(0), skills=[None, fn], skill_ids=[None, "tag"],
                              max_steps=4)
    assert [e.skill for e in eps] == [None, "tag"]
    n1 = eps[1].steps
    assert calls == [(t, suite.tasks[0].text, t) for t in range(n1)]
    for s in steps:
        want = (f"s{s.step}" if s.step % 2 == 0 else None) if s.traj == 1 else None
        assert s.skill == want
        o = suite.new_env().reset(suite.tasks[0]) if s.step == 0 else None
        if o is not None:  # the first prompt is fully determined: with the block for env 1, plain for env 0
            assert s.prompt == p(o.task, 0, [], o.text, o.admissible, block if s.traj == 1 else None)


def test_evaluate_reports_per_type(policy_dir, tok):
    """evaluate() runs one plain episode per task and reports success, score and per-type success consistently."""
    policy = M.load(policy_dir)
    suite = envs.make("household", "eval_unseen", n_tasks=6, seed=0)
    r = R.evaluate(policy, tok, R.Prompter(tok, suite.description), suite, batch=4)
    assert r["n"] == 6 and 0 <= r["success"] <= 1 and set(r["by_type"]) == {t.task_type for t in suite.tasks}


def test_train_runs_checkpoints_and_resumes(policy_dir, tmp_path):
    """train.py runs GiGPO iterations end to end, logs a line per iteration and evaluation, writes a checkpoint
    transformers can load, and --resume continues from it (refusing changed flags)."""
    import train
    out = str(tmp_path / "run")
    flags = ["--model", policy_dir, "--out", out, "--groups", "2", "--group-size", "2", "--eval-tasks", "2",
             "--final-eval-tasks", "2", "--eval-every", "1", "--save-every", "1", "--max-new-tokens", "10",
             "--lr", "1e-3", "--max-steps", "4", "--keep-uniform-groups", "--warmup", "2",
             "--eval-max-steps", "4"]
    train.main(flags + ["--iters", "1"])
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["iter"] for r in rows if not r.get("eval")] == [1]
    assert all(k in rows[1] for k in ("success", "kl", "pg_loss", "train_s", "gen_s", "rl_s", "mixed_groups"))
    assert rows[1]["trained_samples"] == rows[1]["samples"] > 0
    import transformers
    transformers.AutoModelForCausalLM.from_pretrained(os.path.join(out, "ckpt"))
    before = M.load(policy_dir).state_dict()
    after = M.load(os.path.join(out, "ckpt")).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the update changed the weights
    with pytest.raises(SystemExit, match="different flags"):
        train.main(flags + ["--iters", "2", "--resume", "--gamma", "0.9"])
    json_args = json.load(open(os.path.join(out, "args.json")))
    json_args["iters"] = 2
    json.dump(json_args, open(os.path.join(out, "args.json"), "w"))
    train.main(flags + ["--iters", "2", "--resume"])
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["iter"] for r in rows if not r.get("eval")] == [1, 2]
    state = json.load(open(os.path.join(out, "ckpt", "state.json")))
    assert state["iter"] == 2 and state["rl_s"] >= rows[1]["rl_s"] > 0


def test_train_stops_at_rl_time_budget(policy_dir, tmp_path):
    """--max-rl-minutes ends the run after the iteration that crosses it, checkpoints, and still evaluates;
    the update also runs under --amp (bf16 autocast) at a rollout temperature below 1."""
    import train
    out = str(tmp_path / "run")
    final = train.main(["--model", policy_dir, "--out", out, "--groups", "1", "--group-size", "2", "--iters", "5",
                        "--max-steps", "2", "--eval-max-steps", "2", "--eval-tasks", "1", "--final-eval-tasks", "1",
                        "--max-new-tokens", "6", "--max-rl-minutes", "1e-6", "--amp", "--keep-uniform-groups",
                        "--temperature", "0.7"])
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["iter"] for r in rows if not r.get("eval")] == [1] and final["iter"] == 1
    assert rows[1]["trained_samples"] > 0 and rows[1]["grad_norm"] > 0  # the bf16-autocast update ran
    assert json.load(open(os.path.join(out, "ckpt", "state.json")))["iter"] == 1


def test_bad_config_is_a_one_line_error_before_any_work(tmp_path, capsys):
    """A missing --model dir, a dir without config.json, an unsupported architecture, unreadable config JSON and
    phases that leave phase 1 no room each stop argparse with one line naming the problem (nothing is built)."""
    import train
    bad = tmp_path / "bad"
    bad.mkdir()
    cases = [(["--model", str(tmp_path / "nope")], "no such directory"),
             (["--model", str(bad)], "no config.json")]
    for args, msg in cases:
        with pytest.raises(SystemExit):
            train.get_args(args)
        assert msg in capsys.readouterr().err
    (bad / "config.json").write_text(json.dumps(dict(M.config_dict("llama"), model_type="gpt2")))
    with pytest.raises(SystemExit):
        train.get_args(["--model", str(bad)])
    assert "unsupported option model_type='gpt2'" in capsys.readouterr().err
    (bad / "config.json").write_text("[1, 2")
    with pytest.raises(SystemExit):
        train.get_args(["--algo", "gigpo", "--miner", str(bad)])
    assert "--miner" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.get_args(["--phase1-min-frac", "0.9", "--phase2-frac", "0.2"])
    assert "phase 1 could never start" in capsys.readouterr().err
    assert train.get_args(["--phase2-frac", "0", "--phase1-min-frac", "1"]).phase2_frac == 0  # SIRI without phase 2


def test_eval_only_evaluates_the_checkpoint_and_leaves_the_run_alone(policy_dir, tmp_path):
    """--eval-only on a run dir evaluates its checkpoint (not --model), writes eval.json, keeps args.json; a
    checkpoint left as ckpt.old by a crash between the two renames is recovered."""
    import train
    out = str(tmp_path / "run")
    flags = ["--algo", "gigpo", "--model", policy_dir, "--out", out, "--groups", "2", "--group-size", "2",
             "--eval-tasks", "2", "--final-eval-tasks", "3", "--eval-every", "0", "--max-new-tokens", "8",
             "--max-steps", "3", "--eval-max-steps", "3", "--keep-uniform-groups", "--lr", "1e-2", "--iters", "1"]
    train.main(flags)
    args_before = open(os.path.join(out, "args.json")).read()
    os.replace(os.path.join(out, "ckpt"), os.path.join(out, "ckpt.old"))  # as if killed between the renames
    row = train.main(flags + ["--eval-only", "--final-eval-tasks", "4"])
    assert os.path.exists(os.path.join(out, "ckpt", "state.json")) and not os.path.exists(os.path.join(out, "ckpt.old"))
    saved = json.load(open(os.path.join(out, "eval.json")))
    assert saved["policy"] == os.path.join(out, "ckpt") and saved["iter"] == 1
    assert saved["eval_seen"]["n"] == saved["eval_unseen"]["n"] == 4 and row["eval_seen"]["n"] == 4
    assert open(os.path.join(out, "args.json")).read() == args_before
    fresh = str(tmp_path / "fresh")  # no checkpoint: --model is evaluated
    assert train.main(["--model", policy_dir, "--out", fresh, "--eval-only", "--final-eval-tasks", "2",
                       "--eval-max-steps", "2", "--max-new-tokens", "8"])["policy"] == policy_dir


def test_nonfinite_updates_are_skipped_then_the_run_stops(policy_dir, tmp_path, monkeypatch, capsys):
    """A NaN loss: that optimizer update is skipped (weights untouched, counted in skipped_updates) and the run
    goes on; --max-bad-steps updates in a row stop it with a clear message, leaving the last checkpoint whole."""
    import gigpo
    import train
    real = gigpo.policy_loss
    bad = {"on": True}
    monkeypatch.setattr(gigpo, "policy_loss", lambda *a, **kw: (lambda l, m: (l * float("nan") if bad["on"] else l, m))(
        *real(*a, **kw)))
    out = str(tmp_path / "run")
    flags = ["--algo", "gigpo", "--model", policy_dir, "--out", out, "--groups", "2", "--group-size", "2",
             "--eval-tasks", "1", "--final-eval-tasks", "1", "--max-new-tokens", "6", "--max-steps", "2",
             "--eval-max-steps", "1", "--keep-uniform-groups", "--lr", "1e-2", "--updates", "2", "--save-every", "1"]
    train.main(flags + ["--iters", "1", "--max-bad-steps", "3"])  # 2 bad updates: under the limit
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert rows[1]["skipped_updates"] == 2 and "grad_norm" not in rows[1]
    w0, w1 = M.load(policy_dir).state_dict(), M.load(os.path.join(out, "ckpt")).state_dict()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # no NaN reached the weights; nothing moved
    assert "skipped update 2/2" in capsys.readouterr().out
    bad["on"] = False  # healthy updates reset the count
    train.main(flags + ["--iters", "1", "--max-bad-steps", "3", "--out", str(tmp_path / "ok")])
    assert [json.loads(l) for l in open(tmp_path / "ok" / "metrics.jsonl")][1]["skipped_updates"] == 0
    bad["on"] = True
    with pytest.raises(SystemExit, match="3 optimizer updates in a row had a non-finite loss"):
        train.main(flags + ["--iters", "4", "--max-bad-steps", "3", "--out", str(tmp_path / "stop")])
    assert json.load(open(tmp_path / "stop" / "ckpt" / "state.json"))["iter"] == 1  # iteration 1's checkpoint
