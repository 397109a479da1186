"""A real crash: train.py in a subprocess, SIGKILLed in SIRI's phase 1 after a checkpoint, then --resume.

The kill leaves every file whole (the checkpoint train.py would resume from loads completely: model, optimizer,
state, skill bank, success buffer; every JSON file parses; metrics.jsonl at most loses its last line), and the
resumed run continues exactly as an uninterrupted run with the same flags does: the same iteration rows (every
field but the wall-clock ones, names ending in _s), the same event rows and the same final weights, so the
optimizer, RNG streams, bank and buffer were all restored. torch on CPU with one thread is deterministic.

The tiny random policy never wins, so phase 1 (which needs a won episode in the buffer) could not start under
plain `python train.py`. This file is therefore also the launched script: run as __main__ it applies two of
test_siri.py's siri_run hooks (every plain episode counts as won, the miner answers bootstrap's reference skill)
and calls train.main with its arguments, as `python train.py` does.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

import bootstrap
import mine
import model as M
import train
from test_siri import policy_dir  # noqa: F401  (the tiny bootstrap policy fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITERS = 8


def flags(policy, out):
    """Phase 1 from iteration 2 (N_req 1, no minimum fraction), phase 2 in iterations 7-8, a checkpoint every 2
    iterations: after each odd iteration's row the log runs one iteration ahead of the checkpoint, the window in
    which the kill lands (so the resume must drop a logged iteration)."""
    return ["--model", policy, "--out", out, "--algo", "siri", "--iters", str(ITERS), "--groups", "2",
            "--group-size", "4", "--train-tasks", "2", "--max-steps", "3", "--max-new-tokens", "8", "--threads", "1",
            "--eval-tasks", "1", "--final-eval-tasks", "1", "--eval-max-steps", "1", "--save-every", "2",
            "--phase1-min-frac", "0", "--n-req", "1", "--phase2-frac", "0.25", "--keep-uniform-groups",
            "--lr", "1e-3", "--updates", "2", "--mine-every", "2"]


def hooked_main(argv):
    """What the subprocess runs: train.main under the two test hooks (see the module docstring)."""
    real = mine.successes
    mine.successes = lambda steps, eps: real(steps, [replace(e, won=True) for e in eps])
    mine.mine = lambda model, tok, desc, trajs, **kw: ([(bootstrap.reference_skill(t.task_type), t) for t in trajs], 0)
    train.main(argv)


def launch(args, log):
    """This file as a script, in its own process; output to the file `log` (a pipe nobody reads could fill)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def finish(proc, timeout=300):
    proc.wait(timeout=timeout)
    out = open(proc.log).read()
    assert proc.returncode == 0, f"run failed ({proc.returncode}):\n{out[-5000:]}"
    return out


def read_rows(path, allow_cut_last=False):
    """metrics.jsonl's rows; every line must parse, except a last one cut short by the kill."""
    lines = open(path).read().split("\n")
    last = lines.pop()  # "" if the file ends with a newline
    rows = [json.loads(line) for line in lines]
    if last:
        try:
            rows.append(json.loads(last))
        except json.JSONDecodeError:
            assert allow_cut_last, f"{path}: last line unterminated and not JSON: {last[:80]!r}"
    return rows


def iteration_rows(rows):
    return [r for r in rows if not r.get("eval") and "event" not in r]


def kill_in_phase1(proc, out):
    """Poll until a phase-1 checkpoint exists and metrics.jsonl holds an iteration past it, then SIGKILL. Each
    look is taken with the run stopped (SIGSTOP), so the files seen are exactly those the kill leaves."""
    state_path, metrics = os.path.join(out, "ckpt", "state.json"), os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed:\n" + open(proc.log).read()[-3000:]
        proc.send_signal(signal.SIGSTOP)
        try:  # the checkpoint directory is swapped by renames: it can be missing for a moment
            state = json.load(open(state_path))
            logged = max((r.get("iter", 0) for r in iteration_rows(read_rows(metrics, True))), default=0)
        except (FileNotFoundError, json.JSONDecodeError):
            logged, state = 0, None
        if state and state["siri"]["phase"] == 1 and logged > state["iter"]:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    proc.kill()
    pytest.fail("no phase-1 checkpoint within 240 s")


def test_sigkill_in_phase1_then_resume_matches_uninterrupted_run(policy_dir, tmp_path):  # noqa: F811
    crashed, ref = str(tmp_path / "crashed"), str(tmp_path / "reference")
    reference = launch(flags(policy_dir, ref), tmp_path / "reference.log")  # beside the other: less wall time
    kill_in_phase1(launch(flags(policy_dir, crashed), tmp_path / "crashed.log"), crashed)

    # every file whole: the checkpoint --resume reads is ckpt/, or ckpt.old/ if the kill fell between
    # save_checkpoint's two renames; a ckpt.tmp/ (killed mid-write) is never read and the next save removes it
    ckpt = os.path.join(crashed, "ckpt")
    ckpt = ckpt if os.path.exists(ckpt) else ckpt + ".old"
    for d, _, files in os.walk(crashed):
        if os.path.basename(d) != "ckpt.tmp":
            for f in files:
                if f.endswith(".json"):
                    json.load(open(os.path.join(d, f)))
    rows = read_rows(os.path.join(crashed, "metrics.jsonl"), allow_cut_last=True)
    state = json.load(open(os.path.join(ckpt, "state.json")))
    K = state["iter"]
    assert state["siri"]["phase"] == 1 and 2 <= K < ITERS
    assert max(r["iter"] for r in iteration_rows(rows)) > K  # logged past the checkpoint: resume must drop it
    M.load(ckpt)
    torch.load(os.path.join(ckpt, "optimizer.pt"))
    bank = mine.SkillBank.load(os.path.join(ckpt, "bank.json"))
    buffer = mine.SuccessBuffer.load(os.path.join(ckpt, "buffer.json"))
    assert bank.skills and len(buffer) > 0  # phase 1 had mined: there is SIRI state to restore

    log = finish(launch(flags(policy_dir, crashed) + ["--resume"], tmp_path / "resumed.log"))
    assert re.search(rf"resumed from \S+ at iteration {K}\n", log), log[-2000:]
    ref_log = finish(reference)
    assert "resumed" not in ref_log
    rows, ref_rows = (read_rows(os.path.join(d, "metrics.jsonl")) for d in (crashed, ref))
    its, ref_its = iteration_rows(rows), iteration_rows(ref_rows)
    assert [r["iter"] for r in its] == list(range(1, ITERS + 1))
    assert its[K]["phase"] >= state["siri"]["phase"]  # its[K] is iteration K + 1

    def fixed(r):  # everything but wall-clock times and rates
        return {k: v for k, v in r.items() if not k.endswith("_s")}
    for r, q in zip(its[K:], ref_its[K:]):
        assert fixed(r) == fixed(q), f"iteration {r['iter']} differs from the uninterrupted run"
    assert [r for r in rows if "event" in r] == [r for r in ref_rows if "event" in r]
    assert [fixed(r) for r in rows if r.get("eval")] == [fixed(r) for r in ref_rows if r.get("eval")]
    w, ref_w = (M.load(os.path.join(d, "ckpt")).state_dict() for d in (crashed, ref))
    assert all(torch.equal(w[k], ref_w[k]) for k in ref_w)


if __name__ == "__main__":
    hooked_main(sys.argv[1:])
