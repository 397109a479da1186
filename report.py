"""
report.py: results tables and learning curves.

The table over seeds: runs train.py once per (algorithm, seed) with the same flags, a few runs at a time,
then prints held-out success per algorithm as mean +- spread over seeds (markdown, also saved):

  python report.py --out runs/table --algos grpo gigpo siri --seeds 0 1 2 --workers 2 -- \
      --model runs/policy --iters 10 --groups 4 --lr 5e-5

Everything after `--` goes to every train.py run unchanged. Each run writes to OUT/ALGO_sSEED (its log is
OUT/ALGO_sSEED.log); a run whose final.json exists is not run again, so an interrupted table resumes where
it stopped. The "bootstrap" row is each run's evaluation at iteration 0 (the starting policy on the same
held-out tasks, which depend on the seed), averaged over all runs of that seed first. Spread is the
population standard deviation over seeds (with 3 seeds, about the noise of the mean itself). A second table
gives each algorithm's cost per iteration: seconds (all, generation, update, a baseline's own skill work) and
tokens generated and trained. Token counts do not depend on what else runs on the cores; seconds do.

One run (train.py calls these at its end; `python report.py --curve RUN_DIR` redraws a run's picture):
`run_table` is the start-vs-end table of its held-out evaluations, `learning_curve` the PNG of rollout
success per iteration with the held-out evaluations and SIRI's phase boundaries marked.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SPLITS = ("eval_seen", "eval_unseen")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/table", help="one sub-directory per run, plus table.md")
    p.add_argument("--algos", nargs="+", default=["grpo", "gigpo", "siri"], help="train.py --algo values")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="train.py --seed values")
    p.add_argument("--workers", type=int, default=2, help="runs at once (each with --threads = CPU cores // workers)")
    p.add_argument("--dry-run", action="store_true", help="only print the table from the runs already finished")
    p.add_argument("--curve", default="", help="only redraw RUN_DIR/curve.png from RUN_DIR/metrics.jsonl and exit")
    a, rest = p.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    a.train_args = rest
    return a


def run_all(a):
    todo = [(algo, s) for s in a.seeds for algo in a.algos
            if not os.path.exists(os.path.join(a.out, f"{algo}_s{s}", "final.json"))]
    running, threads = [], max(1, (os.cpu_count() or 1) // a.workers)
    while todo or running:
        while todo and len(running) < a.workers:
            algo, s = todo.pop(0)
            name = os.path.join(a.out, f"{algo}_s{s}")
            cmd = [sys.executable, "train.py", "--algo", algo, "--seed", str(s), "--out", name, "--threads", str(threads),
                   *a.train_args]
            print("start:", " ".join(cmd), flush=True)
            running.append((name, subprocess.Popen(cmd, stdout=open(name + ".log", "w"), stderr=subprocess.STDOUT)))
        time.sleep(5)
        for name, proc in list(running):
            if proc.poll() is not None:
                running.remove((name, proc))
                print(f"done: {name} (exit {proc.returncode})", flush=True)
                if proc.returncode != 0:
                    print(f"  see {name}.log", flush=True)


def finished(a):
    """(algo, seed, run dir) of every run of the table whose final.json exists."""
    for algo in a.algos:
        for s in a.seeds:
            d = os.path.join(a.out, f"{algo}_s{s}")
            if os.path.exists(os.path.join(d, "final.json")):
                yield algo, s, d


def results(a):
    """{row: {split: [per-seed success]}} from the finished runs."""
    rows, boot = {}, {}
    for algo, s, d in finished(a):
        final = json.load(open(os.path.join(d, "final.json")))
        for split in SPLITS:
            rows.setdefault(algo, {}).setdefault(split, []).append(final[split]["success"])
            if "with_skills" in final:  # --eval-with-skills: the same policy, best active skill in the prompt
                rows.setdefault(f"{algo} (with skills)", {}).setdefault(split, []).append(
                    final["with_skills"][split]["success"])
        metrics = read_metrics(os.path.join(d, "metrics.jsonl"))
        for r in metrics:
            if r.get("eval") and r["iter"] == 0:
                boot.setdefault(s, []).append(r)
        its = [r["iter_s"] for r in metrics if "iter_s" in r and "event" not in r]
        if its:  # wall clock of rollouts + update per iteration (evaluation excluded): the training-time cost
            rows[algo].setdefault("iter_s", []).append(statistics.mean(its))
    if boot:
        rows = {"bootstrap": {split: [statistics.mean(r[split]["success"] for r in rs) for rs in boot.values()]
                              for split in SPLITS}, **rows}
    return rows


def table(rows):
    fmt = lambda v: f"{statistics.mean(v):.3f} +- {statistics.pstdev(v):.3f} (n={len(v)})"
    secs = lambda r: f"{statistics.mean(r['iter_s']):.0f}" if r.get("iter_s") else "-"
    lines = ["| policy | " + " | ".join(SPLITS) + " | s / iteration |", "|---|" + "---|" * len(SPLITS) + "---:|"]
    lines += [f"| {name} | " + " | ".join(fmt(r[s]) for s in SPLITS) + f" | {secs(r)} |" for name, r in rows.items()]
    return "\n".join(lines)


COSTS = (("iter_s", "s / iteration"), ("gen_s", "generation s"), ("train_s", "update s"),
         ("skill_s", "skill s"), ("gen_tok", "tokens generated"), ("train_tok", "tokens trained"))


def costs(a):
    """{algo: {cost: [per-seed mean over iterations]}}: where an iteration's time goes, and its token counts,
    which two runs sharing the cores do not disturb (tokens = the logged rate x its time)."""
    out = {}
    for algo, _, d in finished(a):
        its = [r for r in read_metrics(os.path.join(d, "metrics.jsonl")) if "iter_s" in r and "event" not in r]
        for r in its:
            for k in ("gen", "train"):
                if f"{k}_tok_s" in r:
                    r[f"{k}_tok"] = r[f"{k}_tok_s"] * r[f"{k}_s"]
        for k, _ in COSTS:
            if its and all(k in r for r in its):
                out.setdefault(algo, {}).setdefault(k, []).append(statistics.mean(r[k] for r in its))
    return out


def cost_table(rows):
    """Markdown: per algorithm, the mean over seeds of each run's mean per iteration (time in s, tokens)."""
    cell = lambda v, k: "-" if not v else f"{statistics.mean(v):.0f}" if k.endswith("tok") else f"{statistics.mean(v):.2f}"
    lines = ["| per iteration | " + " | ".join(name for _, name in COSTS) + " |", "|---|" + "---:|" * len(COSTS)]
    lines += [f"| {algo} | " + " | ".join(cell(r.get(k), k) for k, _ in COSTS) + " |" for algo, r in rows.items()]
    return "\n".join(lines)


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_table(rows):
    """Markdown: held-out success (plain prompt) at the first and the last evaluation of one run's metrics rows."""
    evals = [r for r in rows if r.get("eval") and not r.get("with_skills")]
    splits = [s for s in SPLITS if evals and s in evals[0]]
    lines = ["| policy | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    named = [(f"start (iteration {evals[0]['iter']})", evals[0]), (f"end (iteration {evals[-1]['iter']})", evals[-1])]
    named += [("end, with skills in the prompt (siri: best active)", r) for r in rows if r.get("with_skills")]
    for name, r in named[:min(2, len(evals))] + named[2:]:
        lines.append(f"| {name} | " + " | ".join(f"{r[s]['success']:.3f} ({r[s]['n']} tasks)" for s in splits) + " |")
    return "\n".join(lines)


def learning_curve(rows, png, title=""):
    """Rollout success per iteration, held-out evaluations as markers, phase switches as dashed lines -> PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    its = [r for r in rows if "success" in r and not r.get("eval") and "event" not in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["iter"] for r in its], [r["success"] for r in its], lw=1, color="0.5", label="rollout success (train)")
    evals = [r for r in rows if r.get("eval") and not r.get("with_skills")]
    for split, marker in zip(SPLITS, "os"):
        pts = [(r["iter"], r[split]["success"]) for r in evals if split in r]
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=f"{split} (plain prompt)")
    for r in rows:
        if r.get("event") == "phase":
            ax.axvline(r["iter"] - 0.5, ls="--", color="k", lw=0.8)
            ax.text(r["iter"] - 0.4, 1.0, f"phase {r['to']}", va="top", fontsize=8)
    ax.set(xlabel="iteration", ylabel="success", ylim=(0, 1.05), title=title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv=None):
    a = get_args(argv)
    if a.curve:
        learning_curve(read_metrics(os.path.join(a.curve, "metrics.jsonl")), os.path.join(a.curve, "curve.png"), a.curve)
        print(f"wrote {os.path.join(a.curve, 'curve.png')}")
        return
    os.makedirs(a.out, exist_ok=True)
    if not a.dry_run:
        with open(os.path.join(a.out, "command.txt"), "w") as f:
            f.write(" ".join([sys.executable, *sys.argv]) + "\n")
        run_all(a)
    text = table(results(a))
    if c := costs(a):
        text += "\n\n" + cost_table(c)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
