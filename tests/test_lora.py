"""LoRA adapters in model.py (CPU, float32, tiny random checkpoints)."""

import pytest
import torch
import transformers

import model as M
from test_model import full_logits, make_hf, prompts


def adapted(tmp_path, rank=4, alpha=8.0, seed=0, name="qwen2-gqa"):
    """A tiny model with adapters whose B is random (B = 0 would make the adapters a no-op)."""
    make_hf(name, tmp_path / "base", seed=seed)
    m = M.add_lora(M.load(str(tmp_path / "base"), attn_backend="sdpa"), rank, alpha)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("lora_B.weight"):
                p.copy_(torch.randn_like(p) * 0.05)
    return m


def test_adapters_start_as_the_base_model_and_only_they_train(tmp_path):
    """add_lora wraps the seven projections of every layer; with B = 0 the logits are the base model's; after
    backward only adapter weights have gradients (the base and the embeddings have none)."""
    make_hf("llama-gqa", tmp_path)
    base = M.load(str(tmp_path), attn_backend="sdpa")
    m = M.add_lora(M.load(str(tmp_path), attn_backend="sdpa"), 4, 8.0)
    wrapped = [n for n, mod in m.named_modules() if isinstance(mod, M.LoRALinear)]
    assert len(wrapped) == 7 * m.config.num_hidden_layers
    s = prompts(1)[0]
    with torch.no_grad():
        assert torch.equal(full_logits(m, [s])[0], full_logits(base, [s])[0])
    ps, rs = prompts(3, seed=1), prompts(3, lo=2, hi=6, seed=2)
    M.score(m, ps, rs)[0].sum().backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert all(g is None for n, g in grads.items() if ".lora_" not in n)
    # at B = 0, B's gradient is nonzero and A's is zero (it is multiplied by B)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".lora_B" in n)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {n for n in grads if ".lora_" in n}


def test_adapters_off_is_the_base_model(tmp_path):
    """Inside adapters_off the adapted model's logits equal the base checkpoint's exactly; outside they differ;
    score() through AdaptersOff (the KL reference without a second copy) gives the base model's log-probs."""
    m = adapted(tmp_path)
    base = M.load(str(tmp_path / "base"), attn_backend="sdpa")
    s = prompts(1)[0]
    with torch.no_grad():
        on = full_logits(m, [s])[0]
        with M.adapters_off(m):
            off = full_logits(m, [s])[0]
        assert torch.equal(off, full_logits(base, [s])[0])
        assert (on - off).abs().max() > 1e-3
        assert torch.equal(full_logits(m, [s])[0], on)  # switched back on after the block
        ps, rs = prompts(3, seed=8), prompts(3, lo=2, hi=6, seed=9)  # AdaptersOff: the reference for score()
        assert torch.equal(M.score(M.AdaptersOff(m), ps, rs)[0], M.score(base, ps, rs)[0])


def test_merged_checkpoint_gives_the_adapted_logits(tmp_path):
    """save() folds the adapters into the weights: transformers and our loader read a plain HF checkpoint whose
    logits equal the adapted model's."""
    m = adapted(tmp_path, name="qwen3-gqa")
    M.save(m, str(tmp_path / "merged"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    plain = M.load(str(tmp_path / "merged"), attn_backend="sdpa")
    assert not any(".lora_" in k for k in plain.state_dict())
    s = prompts(1, seed=3)[0]
    with torch.no_grad():
        want = full_logits(m, [s])[0]
        torch.testing.assert_close(full_logits(plain, [s])[0], want, atol=1e-5, rtol=0)
        torch.testing.assert_close(hf(torch.tensor([s])).logits[0], want, atol=1e-4, rtol=0)


def test_saved_adapters_restore_exactly(tmp_path):
    """save_adapters + load_adapters onto a fresh base model restore every adapter bit for bit (so the logits
    are identical); a rank mismatch is refused."""
    m = adapted(tmp_path, rank=3, alpha=6.0)
    M.save_adapters(m, str(tmp_path / "ad"))
    fresh = M.load_adapters(M.load(str(tmp_path / "base"), attn_backend="sdpa"), str(tmp_path / "ad"))
    assert fresh.lora == m.lora
    a, b = m.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s = prompts(1, seed=4)[0]
    with torch.no_grad():
        assert torch.equal(full_logits(fresh, [s])[0], full_logits(m, [s])[0])
    other = M.add_lora(M.load(str(tmp_path / "base")), 2, 6.0)
    with pytest.raises(M.CheckpointError, match="rank/alpha"):
        M.load_adapters(other, str(tmp_path / "ad"))


def test_lora_with_activation_checkpointing_and_generation(tmp_path):
    """Activation checkpointing gives the adapters the same gradients; generation samples from the adapted
    model (greedy tokens differ from the base model's, and equal them under adapters_off)."""
    m = adapted(tmp_path)
    ps, rs = prompts(3, seed=5), prompts(3, lo=2, hi=6, seed=6)
    M.score(m, ps, rs)[0].sum().backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    m.grad_checkpointing = True
    M.score(m, ps, rs)[0].sum().backward()
    for n, p in m.named_parameters():
        if n in ref:
            torch.testing.assert_close(p.grad, ref[n], atol=1e-6, rtol=1e-5)
    base = M.load(str(tmp_path / "base"), attn_backend="sdpa")
    seqs = prompts(4, seed=7)
    with M.adapters_off(m):
        assert torch.equal(M.generate(m, seqs, 8, 0).tokens, M.generate(base, seqs, 8, 0).tokens)
    assert not torch.equal(M.generate(m, seqs, 8, 0).tokens, M.generate(base, seqs, 8, 0).tokens)


# ---------------------------------------------------------------------------- train.py --lora-rank

def test_train_lora_end_to_end_and_resume(tmp_path):
    """train.py --lora-rank: only the adapters train (the checkpoint's merged weights are the initial weights plus
    the saved adapters), the KL reference is the same model with adapters off (no second model is loaded), and a
    run that crashes after its first checkpoint and is resumed ends with the same adapters as an uninterrupted run."""
    import bootstrap
    import rollout as R
    import train

    policy = bootstrap.build(str(tmp_path / "policy"), quiet=True, demos=12, sft_steps=3, hidden=32, layers=1,
                             heads=2, kv_heads=1, intermediate=64, batch=8)
    flags = ["--model", policy, "--algo", "gigpo", "--iters", "2", "--groups", "2", "--group-size", "2",
             "--max-steps", "2", "--max-new-tokens", "6", "--eval-tasks", "1", "--final-eval-tasks", "1",
             "--eval-max-steps", "1", "--keep-uniform-groups", "--lr", "1e-2", "--save-every", "1",
             "--kl-coef", "0.05", "--grad-ckpt", "--lora-rank", "2", "--lora-alpha", "4"]
    loads, real_load = [], M.load
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M, "load", lambda path, *a, **kw: loads.append(path) or real_load(path, *a, **kw))
        train.main(flags + ["--out", str(tmp_path / "straight")])
    assert loads == [policy]  # the reference is not a second copy
    calls, real_rollout = [], R.rollout

    def crash_at_second(*args, **kw):
        if args[5] > 1:  # a training rollout
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("simulated crash")
        return real_rollout(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "rollout", crash_at_second)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train.main(flags + ["--out", str(tmp_path / "resumed")])
    train.main(flags + ["--out", str(tmp_path / "resumed"), "--resume"])
    a = M.load_adapters(real_load(policy), str(tmp_path / "straight" / "ckpt"))
    b = M.load_adapters(real_load(policy), str(tmp_path / "resumed" / "ckpt"))
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(k.endswith("lora_B.weight") and sa[k].abs().sum() > 0 for k in sa)  # the adapters did train
    merged, init = real_load(str(tmp_path / "straight" / "ckpt")).state_dict(), real_load(policy).state_dict()
    for k, v in M.merged_state(a).items():
        torch.testing.assert_close(merged[k], v, atol=1e-6, rtol=0)
    assert all(torch.equal(merged[k], init[k]) for k in init if not k.endswith("proj.weight"))  # norms, embeddings
