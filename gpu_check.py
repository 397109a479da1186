"""
gpu_check.py: one unattended GPU check (under 8 minutes on one H200) that prints one table and writes it to
--out as gpu_check.txt and gpu_check.json.

Sections (each in its own try/except and time guard, so one failure still reports the others):
  parity   bf16 agreement with transformers on a small random Qwen2-shaped model: all-position logits of a
           ragged batch, and greedy generations (ours through the CUDA-graph decode)
  graphs   CUDA-graph replay vs eager static steps: sampled, ragged, stop tokens, same generator
  bench    generation at Qwen2.5-0.5B and 1.5B shapes (random bf16 weights made on the GPU, shared by both
           implementations), ragged prompts of 128-512 tokens, sampled at T = 1, no stop token, batch 64 x 128
           and 256 x 64 new tokens: model.generate vs transformers generate tokens/s (prefill included), and
           the decode rate (the same call with one new token subtracted) as a share of the bandwidth limit,
           B / ((weight bytes + KV bytes read per step) / --bandwidth), KV at the mean length
  siri     one SIRI iteration of the embedded policy on the GPU: train.py --model --policy, 16 groups x 8
           rollouts, 2 iterations (the first captures the graphs); seconds split into generation, env, training
  train7b  train.py --lora-rank --grad-ckpt --dtype bfloat16 on a Qwen2.5-7B-shape checkpoint (random weights, the
           embedded policy's tokenizer): one short SIRI iteration (4 x 4 episodes, <= 4 steps); seconds, peak memory
  lora7b   one LoRA step at Qwen2.5-7B shape (random bf16 weights on the GPU, rank 16, activation checkpointing):
           128 rollouts (16 prompts x 8, prompts of 256-768 tokens, 128 new tokens, sampled), then the
           reference log-probs with adapters off, and a PPO-shaped loss backward over all rows + AdamW;
           peak memory and seconds for generation and training

    (the siri section plays the shipped embedded policy, policies/household)
    python gpu_check.py --out results/              # on the GPU machine
    python gpu_check.py --smoke                     # tiny shapes on CPU: the whole script in a minute
"""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import torch

import engine as E
import model as M

QWEN = {  # Qwen2.5 shapes (config.json of the released models)
    "0.5B": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "1.5B": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "7B": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}
SMOKE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, tie_word_embeddings=True)
SMALL = dict(vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2, tie_word_embeddings=False)  # parity and graph checks


class Timeout(Exception):
    pass


@contextlib.contextmanager
def guard(seconds):
    """Raise Timeout in this section after `seconds` (checked between Python operations)."""
    def fire(*_):
        raise Timeout(f"time guard: over {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(dev, fn):
    sync(dev)
    t = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t, out


def hf_config(shape, **over):
    import transformers
    return transformers.Qwen2Config(max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                                    bos_token_id=None, eos_token_id=None, pad_token_id=None, **shape, **over)


def pair(shape, dev, dtype, seed=0):
    """transformers' model (random init, made on the device) and ours sharing its tensors (no second copy)."""
    import transformers
    torch.manual_seed(seed)
    cfg = hf_config(shape)
    with torch.device(dev):
        hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    with torch.no_grad():  # transformers initialises biases and norms trivially; randomise them so they count
        for n, p in hf.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.generation_config.eos_token_id = None
    with torch.device("meta"):
        ours = M.Transformer(M.ModelConfig.from_hf(cfg.to_dict()))
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=False, assign=True)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    if ours.config.tie_word_embeddings:
        ours.lm_head.weight = ours.model.embed_tokens.weight
    return hf, ours.eval()


def ragged(n, lo, hi, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lens]


def hf_generate(hf, prompts, new, sample=True):
    dev = hf.device
    T = max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts], device=dev)
    am = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts], device=dev)
    kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
    return hf.generate(ids, attention_mask=am, max_new_tokens=new, min_new_tokens=new, pad_token_id=0, **kw)[:, T:]


# -----------------------------------------------------------------------------
# Sections: each returns a list of table rows (dicts).

def check_parity(a, dev, dtype):
    hf, m = pair(SMOKE if a.smoke else SMALL, dev, dtype)
    V = m.config.vocab_size
    seqs = ragged(8, 16, 96, V, seed=1)
    with torch.no_grad():
        ids = M._pad(seqs, dev)
        ctx = M.AttnContext("sdpa", torch.arange(ids.shape[1], device=dev).expand_as(ids))
        ours = m(ids, ctx, out_idx=torch.arange(ids.numel(), device=dev)).view(*ids.shape, -1)
        diff, scale = 0.0, 0.0
        for i, s in enumerate(seqs):
            ref = hf(torch.tensor([s], device=dev)).logits[0].float()
            diff, scale = max(diff, (ours[i, :len(s)] - ref).abs().max().item()), max(scale, ref.abs().max().item())
    new = 32
    got = M.generate(m, seqs, new, temperature=0).tokens
    want = torch.stack([hf_generate(hf, [s], new, sample=False)[0] for s in seqs])
    match = (got == want).float().mean().item()
    # tokens up to each row's first disagreement (after a bf16 near-tie the two continue different texts)
    first = [(r != w).nonzero()[0, 0].item() if (r != w).any() else new for r, w in zip(got, want)]
    return [dict(check="parity", case=f"logits, 8 ragged rows, {dtype}", ours=f"max abs diff {diff:.3g}",
                 reference=f"max abs logit {scale:.3g}", ok=diff <= 0.05 * scale),
            dict(check="parity", case=f"greedy, 8 rows x {new} tokens", ours=f"{match:.1%} tokens equal",
                 reference="transformers greedy", note=f"equal prefix per row {first}",
                 ok=sum(first) >= 0.75 * len(first) * new)]


def check_graphs(a, dev, dtype):
    _, m = pair(SMOKE if a.smoke else SMALL, dev, dtype, seed=1)
    seqs = ragged(48, 8, 200, m.config.vocab_size, seed=2)
    seqs[1] = seqs[0]  # a shared prompt
    stop = list(range(0, m.config.vocab_size, 32))  # ~3% a step: most rows stop, compaction runs
    run = lambda: M.generate(m, seqs, 64, 1.0, stop_ids=stop, generator=torch.Generator(dev).manual_seed(4),
                             static=True)
    graphed = run()
    n_graphs = len(m._engine.graphs)
    E.CUDA_GRAPHS = False
    try:
        eager = run()
    finally:
        E.CUDA_GRAPHS = True
    equal = torch.equal(graphed.tokens, eager.tokens) and torch.equal(graphed.mask, eager.mask)
    lp = (graphed.logprobs - eager.logprobs).abs().max().item()
    stopped = int((graphed.mask.sum(1) < 64).sum())
    return [dict(check="graphs", case=f"48 ragged rows x 64, sampled, {stopped} stopped early",
                 ours=f"tokens {'equal' if equal else 'DIFFER'}", reference="eager static steps",
                 note=f"{n_graphs} graphs captured; max abs logprob diff {lp:.3g}", ok=equal)]


def check_bench(a, dev, dtype, shape, runs):
    import transformers
    hf, m = pair(SMOKE if a.smoke else QWEN[shape], dev, dtype)
    cfg = m.config
    weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in m.parameters()}.values())
    kv_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * torch.finfo(dtype).bits // 8
    lo, hi = (16, 48) if a.smoke else (128, 512)
    rows = []
    for B, R in runs:
        prompts = ragged(B, lo, hi, cfg.vocab_size, seed=B)
        gen = lambda new: M.generate(m, prompts, new, 1.0, generator=torch.Generator(dev).manual_seed(0))
        warm, _ = timed(dev, lambda: gen(R))  # first call: allocates the cache, captures the graphs
        t, _ = timed(dev, lambda: gen(R))
        t1, _ = timed(dev, lambda: gen(1))  # prefill (and one sample)
        timed(dev, lambda: hf_generate(hf, prompts[:8], 2))  # transformers warm-up
        th, out = timed(dev, lambda: hf_generate(hf, prompts, R))
        assert out.shape == (B, R), out.shape
        mean_ctx = sum(map(len, prompts)) / B + R / 2
        limit = B / ((weight_bytes + B * mean_ctx * kv_token) / a.bandwidth)  # tokens/s
        ours, ref, dec = B * R / t, B * R / th, B * (R - 1) / (t - t1)
        rows.append(dict(check="bench", case=f"{'smoke' if a.smoke else shape} {B} x {R}", ours=f"{ours:,.0f} tok/s",
                         reference=f"{ref:,.0f} tok/s", ratio=ours / ref, share=dec / limit,
                         note=f"decode {dec:,.0f} tok/s of a limit of {limit:,.0f} (end to end {ours / limit:.1%}); "
                              f"prefill {t1:.2f}s; first call {warm:.2f}s", ok=True,
                         raw=dict(B=B, R=R, s=t, hf_s=th, prefill_s=t1, first_s=warm, limit_tok_s=limit,
                                  weight_bytes=weight_bytes, kv_bytes_per_step=B * mean_ctx * kv_token)))
        print(f"  bench {rows[-1]['case']}: {rows[-1]['ours']} vs {rows[-1]['reference']}", flush=True)
    E.release(m)
    del hf, m
    return rows


def check_siri(a, dev, dtype):
    if not os.path.isdir(a.policy):
        raise FileNotFoundError(f"{a.policy}: no embedded policy (python bootstrap.py --out {a.policy})")
    with tempfile.TemporaryDirectory() as out:
        small = ["--groups", "2", "--group-size", "2", "--max-steps", "4"] if a.smoke else \
            ["--groups", "16", "--group-size", "8"]
        cmd = [sys.executable, "train.py", "--model", a.policy, "--device", str(dev), "--iters", "2", "--eval-every",
               "0", "--final-eval-tasks", "2", "--out", out] + small
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.siri_s)
        if p.returncode:
            raise RuntimeError(f"train.py exit {p.returncode}: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
        its = [r for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "iter_s" in r]
    rows = []
    for i, r in enumerate(its):
        rows.append(dict(check="siri", case=f"embedded policy, iteration {i + 1}{' (captures)' if i == 0 else ''}",
                         ours=f"{r['iter_s']:.2f} s", reference="" if a.smoke else "12.5 s (before)",
                         **({} if a.smoke else dict(ratio=12.5 / r["iter_s"])),
                         note=f"gen {r['gen_s']:.2f}s env {r['env_s']:.2f}s train {r['train_s']:.2f}s, "
                              f"{r.get('gen_tok_s', 0):,.0f} gen tok/s", ok=True,
                         raw={k: r[k] for k in ("iter_s", "gen_s", "env_s", "train_s", "rollout_s") if k in r}))
    return rows


def random_model(shape, dev, dtype):
    """Our model at `shape`, random weights made on the device: normal(0, 0.02), unit norms, zero biases."""
    with torch.device("meta"):
        m = M.Transformer(M.ModelConfig.from_hf(M.config_dict(max_position_embeddings=32768, **shape)))
    m = m.to(dtype).to_empty(device=dev)
    if m.config.tie_word_embeddings:  # to_empty makes a tensor per module
        m.lm_head.weight = m.model.embed_tokens.weight
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.fill_(1.0) if n.endswith("norm.weight") else p.zero_() if n.endswith("bias") else p.normal_(0, 0.02)
    return m


def check_lora(a, dev, dtype):
    m = random_model(SMOKE if a.smoke else QWEN["7B"], dev, dtype)
    M.add_lora(m, a.lora_rank, 2.0 * a.lora_rank)
    m.grad_checkpointing = True
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
    G, N, R = (2, 2, 8) if a.smoke else (16, 8, 128)
    lo, hi = (16, 48) if a.smoke else (256, 768)
    groups = ragged(G, lo, hi, m.config.vocab_size, seed=7)
    prompts = [p for p in groups for _ in range(N)]  # N rollouts share their group's prompt
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_gen, out = timed(dev, lambda: M.generate(m, prompts, R, 1.0, generator=torch.Generator(dev).manual_seed(0)))
    t_gen2, out = timed(dev, lambda: M.generate(m, prompts, R, 1.0, generator=torch.Generator(dev).manual_seed(1)))
    E.release(m)  # the decode cache is not needed for the update
    resp = out.lists()

    def train():
        with torch.no_grad(), M.adapters_off(m):  # the KL reference: base weights, no second copy
            ref = torch.cat([M.score(m, prompts[s:s + a.micro], resp[s:s + a.micro])[0]
                             for s in range(0, len(prompts), a.micro)])
        adv = torch.randn(len(prompts), 1, device=dev)
        n_tok = sum(map(len, resp))
        for s in range(0, len(prompts), a.micro):
            logp, _ = M.score(m, prompts[s:s + a.micro], resp[s:s + a.micro])
            old, mask = out.logprobs[s:s + a.micro, :logp.shape[1]], out.mask[s:s + a.micro, :logp.shape[1]].float()
            ratio = (logp - old).exp()
            kl = (ref[s:s + a.micro] - logp).exp() - (ref[s:s + a.micro] - logp) - 1  # k3 estimator
            loss = ((-ratio * adv[s:s + a.micro] + 0.01 * kl) * mask).sum() / n_tok
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return n_tok

    t_train, n_tok = timed(dev, train)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    n_params = sum(p.numel() for p in m.parameters())
    n_lora = sum(p.numel() for p in m.parameters() if p.requires_grad)
    return [dict(check="lora7b", case=f"{'smoke' if a.smoke else '7B'} rank {a.lora_rank}, {G}x{N} rollouts x {R}",
                 ours=f"gen {t_gen2:.1f}s train {t_train:.1f}s", reference=f"peak {peak:.1f} GiB",
                 note=f"{n_params / 1e9:.2f}B params, {n_lora / 1e6:.1f}M trainable; first gen call {t_gen:.1f}s; "
                      f"{n_tok} response tokens, {n_tok / t_train:,.0f} train tok/s", ok=True,
                 raw=dict(gen_s=t_gen2, gen_first_s=t_gen, train_s=t_train, peak_gib=peak, tokens=n_tok))]


def check_train_lora(a, dev, dtype):
    """train.py --lora-rank --grad-ckpt on a Qwen2.5-7B-shape checkpoint (random bf16 weights written to disk with
    the embedded policy's tokenizer; ids past its vocabulary decode to nothing): a short SIRI iteration on the
    household env, in a subprocess, peak memory from that process."""
    import shutil
    if not os.path.isdir(a.policy):
        raise FileNotFoundError(f"{a.policy}: no embedded policy (python bootstrap.py --out {a.policy})")
    with tempfile.TemporaryDirectory() as d:
        ckpt, out = os.path.join(d, "model"), os.path.join(d, "run")
        t0 = time.time()
        m = random_model(dict(SMOKE, vocab_size=2048) if a.smoke else QWEN["7B"], dev, dtype)  # >= the tokenizer's
        M.save(m, ckpt)
        del m
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        for f in os.listdir(a.policy):  # the tokenizer and chat template
            if f not in ("config.json", "model.safetensors", "bootstrap.json"):
                shutil.copy(os.path.join(a.policy, f), ckpt)
        write_s = time.time() - t0
        flags = ["--model", ckpt, "--device", str(dev), "--dtype", "bfloat16", "--grad-ckpt", "--lora-rank",
                 str(a.lora_rank), "--iters", "1", "--groups", "4", "--group-size", "4", "--max-steps", "4",
                 "--eval-every", "0", "--final-eval-tasks", "1", "--eval-max-steps", "1", "--lr", "1e-5", "--out", out,
                 "--keep-uniform-groups"]  # random weights never win: train on the uniform groups all the same
        code = ("import sys, torch, train; train.main(sys.argv[1:]); print('PEAK_GIB', "
                "torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float('nan'))")
        p = subprocess.run([sys.executable, "-c", code] + flags, capture_output=True, text=True, timeout=a.siri_s)
        if p.returncode:
            raise RuntimeError(f"train.py exit {p.returncode}: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
        peak = float(p.stdout.split("PEAK_GIB")[-1])
        r = next(r for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "iter_s" in r)
    return [dict(check="train7b", case=f"train.py --lora-rank {a.lora_rank} --grad-ckpt, {'smoke' if a.smoke else '7B'}, "
                                       f"4 x 4 episodes, <= 4 steps", ours=f"{r['iter_s']:.1f} s / iteration",
                 reference=f"peak {peak:.1f} GiB", note=f"gen {r['gen_s']:.1f}s env {r['env_s']:.1f}s train "
                                                       f"{r['train_s']:.1f}s; checkpoint written in {write_s:.0f}s", ok=True,
                 raw=dict(r, peak_gib=peak, write_s=write_s))]


# -----------------------------------------------------------------------------

def table(rows, header):
    cols = ["check", "case", "ours", "reference", "ratio", "decode share of limit", "ok", "note"]
    fmt = lambda r: [r.get("check", ""), r.get("case", ""), r.get("ours", ""), r.get("reference", ""),
                     f"{r['ratio']:.2f}x" if "ratio" in r else "", f"{r['share']:.1%}" if "share" in r else "",
                     {True: "yes", False: "NO"}.get(r.get("ok"), ""), r.get("note", "")]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(x) for x in fmt(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "results"), help="directory for gpu_check.txt / .json")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, CPU allowed: test the script itself")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sections", nargs="+", default=["parity", "graphs", "bench", "siri", "lora7b", "train7b"])
    p.add_argument("--policy", default="policies/household", help="embedded policy checkpoint (the shipped default)")
    p.add_argument("--bandwidth", type=float, default=4.8e12, help="memory bandwidth, bytes/s (H200: 4.8e12)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--micro", type=int, default=16, help="rows per training micro-batch in the LoRA step")
    p.add_argument("--siri-s", type=int, default=150, help="time guard of the siri section (seconds)")
    p.add_argument("--total-s", type=int, default=450, help="no section starts or runs past this many seconds")
    a = p.parse_args()
    dev = torch.device(a.device)
    dtype = torch.bfloat16
    t_start = time.time()
    budget = dict(parity=40, graphs=40, bench=130, siri=a.siri_s + 10, lora7b=150, train7b=a.siri_s + 60)
    import transformers
    header = (f"gpu_check: {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}, bf16{', SMOKE shapes' if a.smoke else ''}")
    print(header, flush=True)
    rows = []
    for sec in a.sections:
        jobs = [(sec, shape) for shape in ("0.5B", "1.5B")] if sec == "bench" else [(sec, None)]
        for name, shape in jobs:
            t0, left = time.time(), a.total_s - (time.time() - t_start)
            try:
                if left < 15:
                    raise Timeout(f"not started: {a.total_s} s total reached")
                with guard(min(budget[name], left)):
                    if name == "bench":
                        out = check_bench(a, dev, dtype, shape, [(8, 8), (16, 4)] if a.smoke else [(64, 128), (256, 64)])
                    else:
                        out = dict(parity=check_parity, graphs=check_graphs, siri=check_siri, lora7b=check_lora,
                                   train7b=check_train_lora)[name](
                            a, dev, dtype)
            except BaseException as e:  # report and go on (Timeout, OOM, a bug)
                if isinstance(e, KeyboardInterrupt):
                    raise
                out = [dict(check=name, case=shape or "", ours="FAILED", ok=False,
                            note=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")]
            for r in out:
                r["seconds"] = round(time.time() - t0, 1)
            rows += out
            print(f"[{name}{' ' + shape if shape else ''}] {time.time() - t0:.1f}s: "
                  + "; ".join(f"{r['case']}: {r['ours']}" for r in out), flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    text = table(rows, header + f"; total {time.time() - t_start:.0f} s")
    print("\n" + text, flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpu_check.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "gpu_check.json"), "w") as f:
        json.dump(dict(header=header, rows=rows), f, indent=1, default=str)


if __name__ == "__main__":
    main()
