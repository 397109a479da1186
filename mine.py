"""
mine.py: SIRI's self-skill mining (SPEC section 2, phase 1).

A skill has three fields (SPEC 2): when to apply (one general sentence, no object
ids), strategy (one or two sentences) and key steps (3-5 short steps joined by
" | "), about 50-80 words in all. The policy itself writes skills: given a
successful plain trajectory in the mining prompt below, it answers with exactly
three lines, which `parse_skill` reads strictly; anything else is dropped and
counted by the caller.

The mining prompt is ours (SIRI does not publish one). The embedded default
policy (bootstrap.py) is trained on it, so its wording is part of that policy.
"""

import re

FIELDS = (("when", "When to apply:"), ("strategy", "Strategy:"), ("steps", "Key steps:"))
MIN_STEPS, MAX_STEPS, MAX_WORDS = 3, 5, 100


def mining_prompt(env_description, task, actions):
    """The user message asking for a skill from one successful trajectory (its actions in order)."""
    listed = " | ".join(actions)
    return (f"You are an expert agent operating in {env_description}. This trajectory solved the task: "
            f"{task.rstrip('.')}.\nActions: {listed}\n"
            "Write one reusable skill for tasks like this one, in exactly three lines:\n"
            "When to apply: <one general sentence, no object numbers>\nStrategy: <one or two sentences>\n"
            "Key steps: <3 to 5 short steps joined by ' | '>")


def skill_text(skill):
    """The three-line answer for a skill dict (what the miner should write)."""
    return "\n".join(f"{label} {skill[key]}" for key, label in FIELDS)


_DIGIT = re.compile(r"\d")


def parse_skill(text):
    """The miner's answer -> {'when', 'strategy', 'steps'}, or None unless it is exactly the three lines in
    order, each non-empty, 'when' free of digits (object ids), 3-5 non-empty key steps, at most 100 words."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) != len(FIELDS):
        return None
    skill = {}
    for line, (key, label) in zip(lines, FIELDS):
        if not line.startswith(label):
            return None
        value = " ".join(line[len(label):].split())
        if not value:
            return None
        skill[key] = value
    steps = [s.strip() for s in skill["steps"].split("|")]
    if not MIN_STEPS <= len(steps) <= MAX_STEPS or not all(steps) or _DIGIT.search(skill["when"]):
        return None
    skill["steps"] = " | ".join(steps)
    if sum(len(v.split()) for v in skill.values()) > MAX_WORDS:
        return None
    return skill
