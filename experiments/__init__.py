"""Experiments that measure SIRI's mechanisms one at a time; each writes a result file under results/
(docs/results.md is regenerated from those files by `python -m experiments.tables`)."""
