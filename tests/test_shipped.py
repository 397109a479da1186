"""The policy shipped in policies/household is what bootstrap.py builds from its current settings: the same
settings and the same training data (a hash over both, recomputed here), and build() uses it instead of
rebuilding. Rebuild it with `python bootstrap.py --out policies/household --threads 1` after a change that
makes these tests fail."""

import filecmp
import json
import os

import bootstrap as B

META = os.path.join(B.SHIPPED, "household", "bootstrap.json")


def test_shipped_policy_matches_the_current_recipe():
    meta = json.load(open(META))
    cfg = B.settings(env="household")
    assert meta["settings"] == cfg, "bootstrap.DEFAULTS (or the household's BOOTSTRAP) changed: rebuild the shipped policy"
    _, triples, mining = B.training_data(cfg)
    assert (len(triples), len(mining)) == (meta["demo_steps"], meta["mining_examples"])
    assert B.recipe(cfg, triples, mining) == meta["recipe"], "the demonstrations changed: rebuild the shipped policy"
    assert B.recipe({**cfg, "sft_steps": cfg["sft_steps"] + 1}, triples, mining) != meta["recipe"]


def test_build_copies_the_shipped_policy(tmp_path):
    out = str(tmp_path / "policy")
    assert B.build(out, quiet=True) == out
    assert filecmp.cmp(os.path.join(out, "model.safetensors"), os.path.join(B.SHIPPED, "household", "model.safetensors"),
                       shallow=False)
    key = json.load(open(os.path.join(out, "bootstrap.json")))["key"]
    assert B.build(out, quiet=True) == out and json.load(open(os.path.join(out, "bootstrap.json")))["key"] == key
