"""
mine.py: SIRI's phase 0 success buffer and phase 1 skill mining, paired validation and skill bank (docs/algorithm.md, "Mining", "Retrieval",
"Validation and lifecycle").

Contract
- `SuccessBuffer`: successful plain (skill-free) trajectories of the rollouts (task text, task type, actions in
  step order, iteration). Its size drives the phase 0 -> 1 switch (N_req); `sample(k, rng)` picks what to mine.
- A skill has three fields: when to apply (one general sentence, no object ids), strategy (one or two
  sentences), key steps (3-5 short steps joined by " | "), about 50-80 words. `mine(...)` shows a model each
  trajectory in the mining prompt below, in one batched generate call under torch.no_grad; `parse_skill`
  reads the three-line answers strictly, the others are dropped and counted. The model is any model.py model:
  the policy's current weights (SIRI: no external model) or another local checkpoint (--miner).
- Paired validation, no extra rollouts: `paired_split(n)` gives the second half of a group the skill;
  delta_g = `group_delta` = mean score of the skill half - mean score of the plain half (`paired_deltas`).
- `SkillBank`: skills per key, lifecycle candidate -> active -> retired, retrieval, JSON save/load, Markdown.
  Every status change goes to `bank.events` as dict(iteration, skill, from, to, reason).

Decisions (SIRI publishes none of these; each number is an argument, defaults here)
1. The mining prompt is ours. The embedded default policy (bootstrap.py) is trained on it.
2. Buffer: FIFO of 512 (the oldest successes are the weakest policy's). `sample` goes round robin over the
   keys in random order (every task type gets mined); within a key the least mined first, then the most
   recent (the current policy), then the shortest. It marks what it returns, so the next round mines other
   trajectories (a greedy miner would rewrite the same skill, a duplicate).
3. Mining is greedy by default: the snapshot's most likely summary, the fewest malformed answers.
4. Key = envs.skill_key(task): the env's task type (household: six; shop: product category) unless the env gives
   its tasks a finer skill_key (cafe: the drink); the task text when there is neither.
5. Utility = mean delta_g over all the groups a skill was used in (no window); untried counts 0, the value of
   a skill no better than the plain prompt.
6. Lifecycle, after each update once uses >= n_eval (3): mean < retire (0.0) -> retired (from candidate or
   active); a candidate with mean > activate (0.0) -> active. A candidate in between (exactly 0 with the
   defaults, common with 0/1 scores) stays a candidate and is evicted first. Active is never demoted.
7. Capacity: 3 non-retired skills per key. For a newcomer to a full key, the lowest-utility skill among the
   key's and the newcomer (0) goes, the oldest existing one on ties: untried, neutral or harmful skills make
   room, ones with a positive mean do not. Evicted skills are retired and kept (still duplicates).
8. Duplicates (the same three fields under the same key, retired included) are skipped.
9. Retrieval, one skill per group: the key's candidates with fewer than n_eval uses are explored (one picked
   uniformly, spreading an iteration's groups) with probability p_explore (0.5) if the key has an active
   skill, always if not; else the active skill with the highest mean; else the best candidate. A key with no
   skills borrows the key whose skills are lexically nearest the task text (Jaccard over lowercase words, no
   digits or stop words; a skill's words: its key's and its 'when' sentence's) if that is >= min_similarity
   (0.1), else None (plain prompt). Retired skills are never returned.
"""

import json
import os
import re
from dataclasses import asdict, dataclass, field

import torch

import envs
import model as M
import rollout as R

# -----------------------------------------------------------------------------
# Phase 0: the success buffer


@dataclass
class Success:
    """One successful plain trajectory."""
    task: str
    task_type: str
    actions: list
    iteration: int
    mined: int = 0  # times handed to the miner

    @property
    def key(self):
        return self.task_type or self.task


class SuccessBuffer:
    """Successful plain trajectories, FIFO with a capacity (decision 2)."""

    def __init__(self, capacity=512):
        assert capacity > 0, "the success buffer needs a positive capacity"
        self.capacity, self.items, self.n_added = capacity, [], 0

    def __len__(self):
        return len(self.items)

    def add(self, task, task_type, actions, iteration):
        self.items.append(Success(task, task_type, list(actions), iteration))
        self.n_added += 1
        del self.items[:-self.capacity]

    def add_from_rollout(self, steps, episodes, iteration):
        """Add every won plain episode of rollout.rollout's (steps, episodes); returns how many were added."""
        wins = successes(steps, episodes)
        for w in wins:
            self.add(*w, iteration)
        return len(wins)

    def sample(self, k, rng, key=None):
        """Up to k trajectories to mine (of one key if given), round robin over the keys in rng's order; within a
        key the least mined, then the most recent, then the shortest first. Marks them as mined once more."""
        by_key = {}
        for s in self.items:
            if key is None or s.key == key:
                by_key.setdefault(s.key, []).append(s)
        keys = sorted(by_key)
        rng.shuffle(keys)
        queues = [sorted(by_key[q], key=lambda s: (s.mined, -s.iteration, len(s.actions))) for q in keys]
        picked = [q[r] for r in range(max(map(len, queues), default=0)) for q in queues if r < len(q)][:k]
        for s in picked:
            s.mined += 1
        return picked

    def save(self, path):
        """JSON, written atomically (the checkpoint holds it next to the bank)."""
        with open(path + ".tmp", "w") as f:
            json.dump(dict(capacity=self.capacity, n_added=self.n_added, items=[asdict(s) for s in self.items]), f)
        os.replace(path + ".tmp", path)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            d = json.load(f)
        buf = cls(d["capacity"])
        buf.n_added, buf.items = d["n_added"], [Success(**x) for x in d["items"]]
        return buf


def paths(steps):
    """{traj: [(step, action, anchor), ...] in step order} from rollout steps (anything with .traj, .step,
    .action, .anchor): each trajectory's actions, what mining and the baselines' skill writers read."""
    out = {}
    for s in steps:
        out.setdefault(s.traj, []).append((s.step, s.action, s.anchor))
    return {k: sorted(v) for k, v in out.items()}


def successes(steps, episodes):
    """(task text, skill key (envs.skill_key: the task type unless the env keys finer), actions) of every won plain episode of rollout.rollout's (steps, episodes), in
    episode order: what SuccessBuffer.add takes (train.py gathers these from every rank)."""
    acts, out = paths(steps), []
    for e in episodes:
        if not e.won or e.skill is not None:
            continue
        done = acts.get(e.traj, [])
        assert [t for t, _, _ in done] == list(range(e.steps)), \
            f"trajectory {e.traj}: plain steps {[t for t, _, _ in done]} for an episode of {e.steps} steps"
        text = getattr(e, "task_text", "") or getattr(e.task, "text", e.task)  # a shop task has no .text
        out.append((text, envs.skill_key(e.task) or e.task_type, [a for _, a, _ in done]))
    return out


# -----------------------------------------------------------------------------
# Phase 1: mining

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


@torch.no_grad()
def mine(policy, tok, env_description, trajectories, max_new_tokens=192, temperature=0.0, generator=None):
    """One skill per trajectory (anything with .task and .actions, e.g. a Success) from `policy` (any model.py
    model), one batched generate call. Returns ([(skill dict, trajectory)], n_dropped)."""
    texts = write(policy, tok, [mining_prompt(env_description, t.task, t.actions) for t in trajectories],
                  max_new_tokens, temperature, generator)
    parsed = [(parse_skill(text), t) for text, t in zip(texts, trajectories)]
    kept = [(s, t) for s, t in parsed if s is not None]
    return kept, len(parsed) - len(kept)


@torch.no_grad()
def write(model, tok, messages, max_new_tokens=192, temperature=0.0, generator=None):
    """The model's answers to user messages (chat template), one batched generate call; greedy by default."""
    if not messages:
        return []
    out = M.generate(model, [R.chat_ids(tok, m) for m in messages], max_new_tokens, temperature,
                     stop_ids=[tok.eos_token_id], generator=generator)
    return [tok.decode(r, skip_special_tokens=True) for r in out.lists()]


# -----------------------------------------------------------------------------
# Paired validation: half of each group with the skill, half plain, same task


def paired_split(n):
    """Per rollout of a group of n: does it get the skill? The second half does (N/2 plain, N/2 with)."""
    assert n >= 2 and n % 2 == 0, f"paired validation needs an even group size n >= 2, got n={n}"
    return [False] * (n // 2) + [True] * (n // 2)


def group_delta(rewards_skill, rewards_plain):
    """delta_g = mean reward of the skill half - mean reward of the plain half (a reward = an episode's score)."""
    assert rewards_skill and rewards_plain, "both halves of a group need at least one rollout"
    return sum(rewards_skill) / len(rewards_skill) - sum(rewards_plain) / len(rewards_plain)


def paired_deltas(episodes):
    """{group: (skill id, delta_g)} for every group of rollout episodes in which a skill was used."""
    groups = {}
    for e in episodes:
        groups.setdefault(e.group, []).append(e)
    out = {}
    for g, eps in groups.items():
        ids = {e.skill for e in eps if e.skill is not None}
        if ids:
            assert len(ids) == 1, f"group {g} mixes skills {sorted(ids)}: one skill per group"
            out[g] = (ids.pop(), group_delta([e.score for e in eps if e.skill is not None],
                                             [e.score for e in eps if e.skill is None]))
    return out


# -----------------------------------------------------------------------------
# The skill bank

STATUSES = ("candidate", "active", "retired")
_CONFIG = ("n_eval", "activate", "retire", "capacity", "p_explore", "min_similarity")
_STOP = {"a", "an", "the", "in", "on", "of", "to", "for", "and", "or", "it", "is", "be", "with", "at", "into", "some"}


class BankError(ValueError):
    """A skill bank file that cannot be read back."""


@dataclass
class Skill:
    id: int
    key: str
    when: str
    strategy: str
    steps: str
    created: int  # iteration it was mined at
    source: list  # [{"task": ..., "actions": [...]}]: the trajectory it was mined from
    status: str = "candidate"
    deltas: list = field(default_factory=list)  # delta_g of every group it was used in

    @property
    def uses(self):
        return len(self.deltas)

    @property
    def mean_delta(self):  # the utility; 0 when untried (decision 5)
        return sum(self.deltas) / len(self.deltas) if self.deltas else 0.0

    @property
    def fields(self):  # what rollout.format_skill takes
        return dict(when=self.when, strategy=self.strategy, steps=self.steps)


def _words(text):
    return set(re.findall(r"[a-z]+", text.lower())) - _STOP


def _jaccard(a, b):
    return len(a & b) / len(a | b) if a | b else 0.0


class SkillBank:
    """Mined skills per key, their lifecycle and retrieval (decisions 5-9)."""

    def __init__(self, n_eval=3, activate=0.0, retire=0.0, capacity=3, p_explore=0.5, min_similarity=0.1):
        assert n_eval >= 1 and capacity >= 1 and retire <= activate, "need n_eval, capacity >= 1, retire <= activate"
        self.n_eval, self.activate, self.retire, self.capacity = n_eval, activate, retire, capacity
        self.p_explore, self.min_similarity = p_explore, min_similarity
        self.skills, self.events, self.next_id = {}, [], 0  # skills: id -> Skill, in creation order

    def _move(self, s, to, iteration, reason):
        self.events.append({"iteration": iteration, "skill": s.id, "from": s.status, "to": to, "reason": reason})
        s.status = to

    def add(self, skill, key, iteration, source):
        """Add a mined skill (a parse_skill dict) under key as a candidate. source: the trajectory (.task and
        .actions, or a dict with those keys). Returns the new id, or None for a duplicate or a key full of
        skills with a positive mean delta (decisions 7-8)."""
        fields = {f: skill[f] for f, _ in FIELDS}
        if any(s.key == key and s.fields == fields for s in self.skills.values()):
            return None
        live = [s for s in self.skills.values() if s.key == key and s.status != "retired"]
        if len(live) >= self.capacity:
            victim = min(live, key=lambda s: (s.mean_delta, s.id))
            if victim.mean_delta > 0.0:
                return None
            self._move(victim, "retired", iteration, f"evicted: key full, lowest utility {victim.mean_delta:+.3f}")
        src = source if isinstance(source, dict) else dict(task=source.task, actions=source.actions)
        s = Skill(self.next_id, key, created=iteration, source=[dict(task=src["task"], actions=list(src["actions"]))],
                  status=None, **fields)  # None -> candidate below, logged
        self.skills[s.id], self.next_id = s, self.next_id + 1
        self._move(s, "candidate", iteration, "mined")
        return s.id

    def update(self, skill_id, delta, iteration):
        """Record one group's delta_g for a skill, then apply the lifecycle (decision 6)."""
        s = self.skills[skill_id]
        s.deltas.append(float(delta))  # a skill evicted since its retrieval still records it, and stays retired
        if s.uses < self.n_eval or s.status == "retired":
            return
        if s.mean_delta < self.retire:
            self._move(s, "retired", iteration, f"mean delta {s.mean_delta:+.3f} < {self.retire} after {s.uses} uses")
        elif s.status == "candidate" and s.mean_delta > self.activate:
            self._move(s, "active", iteration, f"mean delta {s.mean_delta:+.3f} > {self.activate} after {s.uses} uses")

    def retrieve(self, key, task_text, rng, explore=True):
        """The Skill to put in half of one group's rollouts of a task with this key, or None (decision 9).
        explore=False (evaluation with skills): the best active skill of the key, or None; rng is not used."""
        live = [s for s in self.skills.values() if s.status != "retired"]
        pool = [s for s in live if s.key == key]
        if not pool:  # unknown key: the lexically nearest known key
            words, sim = _words(task_text), {}
            for s in live:
                sim[s.key] = max(sim.get(s.key, 0.0), _jaccard(words, _words(f"{s.key} {s.when}")))
            near = max(sim, key=sim.get, default=None)
            if near is None or sim[near] < self.min_similarity:
                return None
            pool = [s for s in live if s.key == near]
        active = [s for s in pool if s.status == "active"]
        if not explore:
            return max(active, key=lambda s: (s.mean_delta, -s.id)) if active else None
        fresh = [s for s in pool if s.status == "candidate" and s.uses < self.n_eval]
        if fresh and (not active or rng.random() < self.p_explore):
            return rng.choice(fresh)
        return max(active or pool, key=lambda s: (s.mean_delta, -s.id))

    def counts(self):
        return {st: sum(s.status == st for s in self.skills.values()) for st in STATUSES}

    def state(self):
        return dict(config={k: getattr(self, k) for k in _CONFIG}, next_id=self.next_id,
                    skills=[asdict(s) for s in self.skills.values()], events=self.events)

    def save(self, path):
        """Human-readable JSON, written atomically (a crash mid-write leaves the previous file)."""
        with open(path + ".tmp", "w") as f:
            json.dump(self.state(), f, indent=1)
        os.replace(path + ".tmp", path)

    @classmethod
    def load(cls, path):
        """A saved bank; a file that is not one raises BankError naming it (a missing file: FileNotFoundError)."""
        try:
            with open(path) as f:
                d = json.load(f)
            bank = cls(**d["config"])
            bank.next_id, bank.events = int(d["next_id"]), list(d["events"])
            for x in d["skills"]:
                s = Skill(**x)
                if (s.status not in STATUSES or s.id in bank.skills or not 0 <= s.id < bank.next_id
                        or not all(isinstance(v, (int, float)) for v in s.deltas)):
                    raise ValueError(f"skill {s.id}: bad status, id or deltas")
                bank.skills[s.id] = s
        except (ValueError, KeyError, TypeError, AttributeError, AssertionError) as e:
            raise BankError(f"{path}: not a valid skill bank file ({type(e).__name__}: {e})") from e
        return bank

    def markdown(self):
        """A readable export: a section per key, each skill with its status, uses, mean delta and three fields."""
        lines = ["# Skill bank", "", ", ".join(f"{n} {st}" for st, n in self.counts().items())]
        for key in dict.fromkeys(s.key for s in self.skills.values()):
            lines += ["", f"## {key}"]
            for s in (s for s in self.skills.values() if s.key == key):
                lines += ["", f"### Skill {s.id}: {s.status}, {s.uses} uses, mean delta {s.mean_delta:+.3f} "
                              f"(mined at iteration {s.created})", ""]
                lines += [f"- {line}" for line in skill_text(s.fields).splitlines()]
        return "\n".join(lines) + "\n"
