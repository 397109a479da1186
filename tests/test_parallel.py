"""torchrun on CPU with gloo (parallel.py): 2 ranks run a few SIRI iterations of the real pipeline (DDP and
FSDP2); the update on split data equals the single-process update; metrics are sums over ranks; parameters
stay identical across ranks; a checkpoint written under FSDP2 loads. Each launch is a subprocess."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

import model as M
import mine
from test_siri import policy_dir  # noqa: F401  (the tiny bootstrap policy fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "torchrun_driver.py")


def torchrun(*args, timeout=300, check=True, **env):
    with socket.socket() as s:  # a free port: concurrent test runs must not share a rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", DRIVER, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", **env)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0 or not check, f"torchrun failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p.stdout


@pytest.mark.parametrize("shard", ["ddp", "fsdp"])
def test_update_on_two_ranks_equals_one_process(policy_dir, tmp_path, shard):  # noqa: F811
    """Global token normalisers x W: the 2-rank gradient mean is the 1-process token mean, so after one AdamW
    step every parameter tensor agrees; ranks with different micro-batch counts run zero-weight fillers."""
    out = str(tmp_path / "u.json")
    torchrun("update", policy_dir, shard, out)
    r = json.load(open(out))
    assert r["ref"].keys() == r["dist"].keys()
    for k in r["ref"]:
        assert abs(r["ref"][k] - r["dist"][k]) <= 1e-4 * (1 + abs(r["ref"][k])), k
    for k in ("pg_loss", "kl", "entropy", "approx_kl", "clipfrac", "ratio_max", "grad_norm"):
        assert r["metrics"][k] == pytest.approx(r["ref_metrics"][k], rel=1e-4, abs=1e-6), k


def siri_flags(policy_dir, out, *extra):
    return ["siri", "--model", policy_dir, "--out", out, "--algo", "siri", "--iters", "5", "--groups", "4",
            "--group-size", "4", "--train-tasks", "4", "--max-steps", "3", "--max-new-tokens", "8", "--threads", "1",
            "--eval-tasks", "3", "--final-eval-tasks", "3", "--eval-max-steps", "1", "--save-every", "1",
            "--phase1-min-frac", "0", "--n-req", "1", "--phase2-frac", "0.4", "--keep-uniform-groups", "--lr", "1e-3",
            "--updates", "2", "--micro-tokens", "400", "--mine-every", "2", *extra]


@pytest.mark.parametrize("shard", ["ddp", "fsdp"])
def test_siri_on_two_ranks(policy_dir, tmp_path, shard):  # noqa: F811
    out = str(tmp_path / "run")
    log = torchrun(*siri_flags(policy_dir, out, "--shard", shard))
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    its = [r for r in rows if not r.get("eval") and "event" not in r]
    assert [r["iter"] for r in its] == [1, 2, 3, 4, 5]
    assert [r["phase"] for r in its] == [0, 1, 1, 2, 2] or [r["phase"] for r in its] == [1, 1, 1, 2, 2]
    for r in its:
        rk = r["ranks"]
        assert r["samples"] == sum(rk["samples"]) and r["samples"] > 0  # the metrics are sums over ranks
        assert sum(rk["episodes"]) == 4 * 4 and rk["episodes"] == [8, 8]  # 2 whole groups of 4 per rank
        assert len(set(rk["backward"])) == 1
        if shard == "ddp":
            assert len(set(rk["param_sum"])) == 1  # identical parameters on both ranks after every update
    assert all(r["gate_frac"] > 0 and r["distill_loss"] > 0 for r in its if r["phase"] == 2)
    assert all(r["skill_groups"] == 4 for r in its if r["phase"] >= 1)  # every group of both ranks had a skill
    assert mine.SkillBank.load(os.path.join(out, "ckpt", "bank.json")).counts()["active"] >= 1
    evals = [r for r in rows if r.get("eval")]
    assert all(r["eval_seen"]["n"] == 3 for r in evals)  # 3 tasks, split 2 / 1 over the ranks, merged
    M.load(os.path.join(out, "ckpt"))  # written by rank 0, whole (under FSDP2: gathered from the shards)
    assert log.count("results:") == 1  # only rank 0 prints


def test_fsdp_crash_and_resume_replays_the_run(policy_dir, tmp_path):  # noqa: F811
    """FSDP2 on 2 ranks: a run that crashes in iteration 4 (checkpoint at 3: full weights, full optimizer state,
    bank, buffer) and is resumed ends with the same rows and bit-identical weights as an uninterrupted run."""
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    torchrun(*siri_flags(policy_dir, full, "--shard", "fsdp"))
    log = torchrun(*siri_flags(policy_dir, cut, "--shard", "fsdp"), check=False, CRASH_AT="4")
    assert json.load(open(os.path.join(cut, "ckpt", "state.json")))["iter"] == 3
    log = torchrun(*siri_flags(policy_dir, cut, "--shard", "fsdp", "--resume"))
    assert "resumed from" in log and "at iteration 3" in log
    rows = [[json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))] for d in (full, cut)]
    strip = lambda r: {k: v for k, v in r.items() if not k.endswith("_s") and k != "rl_s"}  # wall clock differs
    assert [strip(r) for r in rows[0]] == [strip(r) for r in rows[1]]
    w = [M.load(os.path.join(d, "ckpt")).state_dict() for d in (full, cut)]
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])


@pytest.mark.parametrize("algo", ["d2skill", "reskill"])
def test_baseline_on_two_ranks(policy_dir, tmp_path, algo):  # noqa: F811
    """A baseline's state is updated from gathered episodes on every rank and its skills are written strided
    over the ranks and gathered: both ranks hold the same state after every iteration, and each written skill
    answers its own prompt (the gather keeps the order)."""
    out = str(tmp_path / "run")
    flags = ["baseline", "--model", policy_dir, "--out", out, "--algo", algo, "--iters", "3", "--groups", "4",
             "--group-size", "4", "--train-tasks", "4", "--max-steps", "3", "--max-new-tokens", "8", "--threads",
             "1", "--eval-tasks", "2", "--final-eval-tasks", "2", "--eval-max-steps", "1", "--lr", "1e-3",
             "--eval-with-skills", "--rs-min-iters", "1", "--rs-min-episodes", "4"]
    torchrun(*flags)
    states = [[json.loads(l) for l in open(os.path.join(out, f"base_rank{r}.jsonl"))] for r in (0, 1)]
    assert len(states[0]) == 3 and states[0] == states[1]
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    its = [r for r in rows if not r.get("eval") and "event" not in r]
    assert [r["iter"] for r in its] == [1, 2, 3]
    for r in its:
        assert r["ranks"]["episodes"] == [8, 8] and len(set(r["ranks"]["param_sum"])) == 1
    last = states[0][-1]
    if algo == "d2skill":
        skills = last["skills"]
        assert {s["pool"] for s in skills} == {"task", "step"}
        for s in skills:  # the answer written for this skill's own task (step prompts carry the same task)
            assert s["when"] == "For " + " ".join(re.sub(r"[0-9]", "", s["task"].rstrip(".")).split()), s
    else:
        assert last["events"] and any(s for s in (last.get("old") or []) + (last.get("new") or []))
    assert json.load(open(os.path.join(out, "ckpt", "baseline.json"))) == last
