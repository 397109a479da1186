"""baselines: the related skill systems (docs/algorithm.md, "Baselines"), each one file with the duck-typed interface train.py calls
(d2skill.py: D2Skill's dual-granularity skill bank)."""
