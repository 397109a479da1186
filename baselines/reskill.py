"""
baselines/reskill.py: ReSkill (arXiv 2606.01619; docs/algorithm.md, "Baselines"), skill sets revised by the policy and A/B tested in RL.

What it does
- A skill: a short document (mine.py's three fields, shown by rollout.format_skill) with a trigger: "always",
  "first" (step 0 only) or any other string = a regex searched in the previous action. A version: a set of at
  most --rs-max-active skills. Skills are scoped by key: each carries the task type of the trajectory it was
  written from (the task text when the env has none) and fires only on tasks of that key.
- assign: with no proposal every rollout runs the current set (old); with one, each rollout of every group
  runs the proposed set (new) with probability clamp(P(theta_new > theta_old), p_min, p_max), one rng coin per
  rollout. P by deterministic numerical integration over a grid (p_better), no Monte Carlo.
- observe: each version's evidence S <- w S + s, F <- w F + f with w = M / (M + n), n = its episodes this
  iteration; posterior Beta(a0 + S, b0 + F). After --rs-min-iters iterations and --rs-min-episodes episodes of
  the new set: accepted if its posterior mean is higher, else reverted.
- Memory M: the grid's largest value (inf: no discount) until a test finishes. After each: for every M of the
  grid, replay every finished test's per-iteration (s, f) of both versions from the prior with that M, summing
  log P(an iteration's outcomes | the posterior before it) (beta-binomial, lnB(a + s, b + f) - lnB(a, b); the
  binomial coefficient does not depend on M); the highest total wins, the larger M on ties. A small M wins when
  success drifts within a test (the policy learns while it is tested).
- propose (the creator): the policy (or another local checkpoint) writes skills from recent successes; the new
  set is the old one revised with them. Status changes go to `events` as dict(iteration, version or skill,
  from, to, reason).

Flags (FLAGS below; train.py adds them): --rs-max-active 8, --rs-max-in-prompt 1, --rs-prior-alpha 1,
--rs-prior-beta 1, --rs-p-min 0.15, --rs-p-max 0.85, --rs-memory-grid 5,10,20,50,100,inf, --rs-min-iters 5,
--rs-min-episodes 50, --rs-create-every 1, --rs-create-count 2, --rs-quad-points 2048.

Departures from the paper (and decisions it leaves open)
1. The creator. The paper's creator reads successes and failures and writes the whole revised set in one answer.
   Our embedded tiny policy (bootstrap.py) was only trained on mine.mining_prompt -> a three-line skill, so the
   creator here is that prompt on one successful trajectory per key, parsed by mine.parse_skill (unparseable
   answers dropped and counted). Failures only choose which keys to write for: the keys with a success, lowest
   success rate this iteration first, up to --rs-create-count; within a key the shortest won trajectory.
2. Triggers of created skills: always "always" (the tiny policy saw its skill block at every step of an
   episode; a "first" block would vanish after step 0). "first" and regex triggers work for hand-written sets.
3. Revision rule: a created skill replaces the old set's skill with the same key and trigger (with one block per
   prompt two "always" skills of a key would compete for one slot), else it is added; above the cap the oldest
   skills go (earliest creation, then lowest id). ReSkill tests whole versions, so there is no per-skill credit
   to rank by; a bad replacement is what the A/B test reverts.
4. At most --rs-max-in-prompt (1) triggered skills per prompt, in the order first-step, regex, always, and set
   order within each kind: the tiny policy was trained with exactly one skill block per prompt.
5. Discounting applies to the evidence, not the prior (alpha = a0 + S): a version that never wins keeps
   alpha >= a0 instead of decaying to an extreme Beta. A version played in no episode this iteration is not
   discounted (n = 0, w = 1). A new M applies from the next update; posteriors are not recomputed.
6. "At least 50 episodes" counts episodes of the new set (at p_min = 0.15 it can be the minority).
7. The replay for M starts both versions of a test from the prior (the old set's earlier evidence was weighed
   under another M).
8. Evaluation with skills (eval_skill_of) uses the accepted (old) set, also while a proposal is pending.
9. The first set is empty, so the first proposal is tested against the plain prompt.
10. "Recent" successes and failures: those of the iteration propose is called at (no win, no proposal).
"""

import math
import re

import mine
import rollout as R

FLAGS = [
    ("--rs-max-active", int, 8, "most skills in a set (paper: 8)"),
    ("--rs-max-in-prompt", int, 1, "most triggered skill blocks in one prompt (the tiny policy saw exactly one)"),
    ("--rs-prior-alpha", float, 1.0, "Beta prior alpha of each version's success rate (paper: Beta(1,1))"),
    ("--rs-prior-beta", float, 1.0, "Beta prior beta"),
    ("--rs-p-min", float, 0.15, "P(new set better) is clamped to [p-min, p-max] for the coin flip (paper: 0.15)"),
    ("--rs-p-max", float, 0.85, "upper clamp (paper: 0.85)"),
    ("--rs-memory-grid", str, "5,10,20,50,100,inf", "values of the discount memory M (w = M/(M+n)), chosen by "
                                                    "predictive likelihood over finished tests; the last before any"),
    ("--rs-min-iters", int, 5, "iterations a test runs before accept / revert (paper: 5)"),
    ("--rs-min-episodes", int, 50, "episodes of the new set before accept / revert (paper: 50)"),
    ("--rs-create-every", int, 1, "the creator may propose at iterations divisible by this (none while a test runs)"),
    ("--rs-create-count", int, 2, "most skills the creator writes per proposal (one per key)"),
    ("--rs-quad-points", int, 2048, "grid points of the numerical integral for P(new better)"),
]
KINDS = ("first", "regex", "always")  # the order triggered skills are shown in (departure 4)
FIELDS = [key for key, _ in mine.FIELDS]

# -----------------------------------------------------------------------------
# The math: Beta posteriors, discounting, P(new better), the memory M


def weight(M, n):
    """The discount w = M / (M + n) of a version with n episodes this iteration (1 when n = 0 or M = inf)."""
    return 1.0 if n == 0 or math.isinf(M) else M / (M + n)


def discount(S, F, s, f, M):
    """One iteration's update of a version's evidence: (w S + s, w F + f)."""
    w = weight(M, s + f)
    return w * S + s, w * F + f


def p_better(a1, b1, a2, b2, points=2048):
    """P(theta_1 > theta_2), theta_1 ~ Beta(a1, b1), theta_2 ~ Beta(a2, b2) independent: both densities on the
    midpoints of `points` equal cells of (0, 1), normalised to sum 1, then sum_i p1_i (P2(< x_i) + p2_i / 2).
    Exact for two uniforms; Beta(2,1) vs Beta(1,1) gives 2/3 - 1/(6 points^2). Needs a, b >= 1 (our posteriors)."""
    xs = [(i + 0.5) / points for i in range(points)]

    def cells(a, b):
        lw = [(a - 1) * math.log(x) + (b - 1) * math.log1p(-x) for x in xs]
        top = max(lw)
        w = [math.exp(v - top) for v in lw]
        z = sum(w)
        return [v / z for v in w]

    p1, p2 = cells(a1, b1), cells(a2, b2)
    below, p = 0.0, 0.0
    for u, v in zip(p1, p2):
        p += u * (below + 0.5 * v)
        below += v
    return p


def _lbeta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def log_predictive(history, M, a0=1.0, b0=1.0):
    """Sum over iterations of log P(this iteration's outcomes | the discounted posterior before it), replayed from
    Beta(a0, b0). history: [(s, f)] per iteration. The binomial coefficient, the same for every M, is left out."""
    S = F = 0.0
    ll = 0.0
    for s, f in history:
        ll += _lbeta(a0 + S + s, b0 + F + f) - _lbeta(a0 + S, b0 + F)
        S, F = discount(S, F, s, f, M)
    return ll


def choose_memory(tests, grid, a0=1.0, b0=1.0):
    """The M of the grid whose replay predicts the finished tests best (the larger M on ties). tests: [{"new":
    [(s, f)] per iteration, "old": [...]}]. Returns (M, {M: total log predictive})."""
    ll = {M: sum(log_predictive(t[v], M, a0, b0) for t in tests for v in ("new", "old")) for M in grid}
    return max(grid, key=lambda M: (round(ll[M], 9), M)), ll


# -----------------------------------------------------------------------------
# Skills and triggers


def kind(skill):
    return skill["trigger"] if skill["trigger"] in ("first", "always") else "regex"


def triggered(skill, t, prev_action):
    """Does the skill fire at step t (0-based) after prev_action (None at step 0)?"""
    k = kind(skill)
    if k == "always":
        return True
    if k == "first":
        return t == 0
    return prev_action is not None and re.search(skill["trigger"], prev_action) is not None


def stepper(skills, max_in_prompt):
    """The per-step callable rollout asks: (t, obs, past) -> (block of the skills that fire, or None; their ids
    joined by '+', e.g. "3" or "3+7", or None). past: [(observation text, action)] so far."""
    def at(t, obs, past):
        prev = past[-1][1] if past else None
        fire = sorted((s for s in skills if triggered(s, t, prev)), key=lambda s: KINDS.index(kind(s)))
        shown = fire[:max_in_prompt]
        if not shown:
            return None, None
        return "".join(R.format_skill(s) for s in shown), "+".join(str(s["id"]) for s in shown)
    return at


def _same(a, b):
    return a["key"] == b["key"] and all(a[k] == b[k] for k in FIELDS)


# -----------------------------------------------------------------------------
# ReSkill


class ReSkill:
    """ReSkill's versions, A/B test, discounted posteriors and creator. Call order per iteration: assign ->
    rollout -> bonus (none) -> update = observe (every rank's episodes) + propose. Deterministic given the rng passed to assign."""

    def __init__(self, a, description):
        g = lambda name: getattr(a, name[2:].replace("-", "_"))
        self.max_active, self.max_in_prompt = g("--rs-max-active"), g("--rs-max-in-prompt")
        self.a0, self.b0, self.p_min, self.p_max = (g(f) for f in ("--rs-prior-alpha", "--rs-prior-beta",
                                                                   "--rs-p-min", "--rs-p-max"))
        self.grid = [float(x) for x in str(g("--rs-memory-grid")).split(",")]
        self.min_iters, self.min_eps = g("--rs-min-iters"), g("--rs-min-episodes")
        self.create_every, self.create_count = g("--rs-create-every"), g("--rs-create-count")
        self.points, self.description = g("--rs-quad-points"), description  # (a.group_size: not needed)
        assert self.a0 >= 1 and self.b0 >= 1, "p_better needs Beta priors with alpha, beta >= 1"
        assert 0 <= self.p_min <= self.p_max <= 1, "need 0 <= p_min <= p_max <= 1"
        assert self.grid and all(M > 0 for M in self.grid), "the memory grid needs positive values"
        assert 1 <= self.create_count <= self.max_active and self.max_in_prompt >= 1 and self.create_every >= 1
        self.memory = max(self.grid)  # until a test finishes
        self.old, self.new = [], None  # skill sets: lists of dicts (id, key, trigger, when, strategy, steps, created)
        self.post = {"old": [0.0, 0.0], "new": [0.0, 0.0]}  # discounted evidence (S, F); alpha = a0 + S
        self.test, self.test_iters, self.test_eps, self.since = [], 0, 0, None  # the running test
        self.tests, self.events, self.next_id = [], [], 0  # finished tests: [{"new": [(s, f)], "old": [...]}]
        self.version, self.n = 0, dict(proposals=0, accepted=0, reverted=0, created=0, dropped=0)

    # --- posteriors

    def posterior(self, v):
        """(alpha, beta) of version "old" or "new"."""
        S, F = self.post[v]
        return self.a0 + S, self.b0 + F

    def mean(self, v):
        al, be = self.posterior(v)
        return al / (al + be)

    def p_new(self):
        """clamp(P(theta_new > theta_old)) with a proposal pending, else 0."""
        if self.new is None:
            return 0.0
        return min(max(p_better(*self.posterior("new"), *self.posterior("old"), self.points), self.p_min), self.p_max)

    # --- rollouts

    def assign(self, it, tasks, group_size, rng, describe):
        """Per env (task-major: env i plays tasks[i // group_size]) the per-step callable of its version, scoped to
        its task's key, and the version tag "new" / "old". With a proposal pending one rng.random() per env."""
        p = self.p_new()
        skills, ids = [], []
        for task in tasks:
            key, text = describe(task)
            key = key or text
            for _ in range(group_size):
                v = "new" if self.new is not None and rng.random() < p else "old"
                skills.append(stepper([s for s in getattr(self, v) if s["key"] == key], self.max_in_prompt))
                ids.append(v)
        return skills, ids

    def eval_skill_of(self, describe):
        """task -> per-step callable of the accepted set (departure 8), for rollout.evaluate(skill_of=...)."""
        def skill_of(task):
            key, text = describe(task)
            return stepper([s for s in self.old if s["key"] == (key or text)], self.max_in_prompt)
        return skill_of

    # --- the test

    def observe(self, it, eps):
        """Every rank's episodes of this iteration (anything with .skill = "new" / "old" and .won): update both
        posteriors, then accept / revert once the test is long enough. Returns metrics (memory 0 = inf)."""
        n = {"new": [0, 0], "old": [0, 0]}
        for e in eps:
            assert e.skill in n, f"episode version {e.skill!r}: assign tags every episode 'new' or 'old'"
            assert e.skill == "old" or self.new is not None, "a 'new' episode with no proposal pending"
            n[e.skill][0 if e.won else 1] += 1
        for v in ("old", "new") if self.new is not None else ("old",):
            self.post[v] = list(discount(*self.post[v], *n[v], self.memory))
        decided = None
        if self.new is not None:
            self.test.append({v: list(n[v]) for v in n})
            self.test_iters, self.test_eps = self.test_iters + 1, self.test_eps + sum(n["new"])
            if self.test_iters >= self.min_iters and self.test_eps >= self.min_eps:
                decided = self._decide(it)
        (ao, bo), (an, bn) = self.posterior("old"), (self.posterior("new") if self.new is not None else (0.0, 0.0))
        return dict(p_new=self.p_new(), alpha_old=ao, beta_old=bo, alpha_new=an, beta_new=bn,
                    n_active=len(self.old), n_new_eps=sum(n["new"]), n_old_eps=sum(n["old"]),
                    test_iters=self.test_iters, test_eps=self.test_eps, accepted=self.n["accepted"],
                    reverted=self.n["reverted"], decided={"accept": 1, "revert": -1}.get(decided, 0),
                    memory=0.0 if math.isinf(self.memory) else self.memory)

    def _decide(self, it):
        mn, mo = self.mean("new"), self.mean("old")
        why = f"posterior mean {mn:.3f} vs old {mo:.3f} after {self.test_iters} iterations, {self.test_eps} episodes"
        old_ids, new_ids = {s["id"] for s in self.old}, {s["id"] for s in self.new}
        version = self.n["proposals"]
        if mn > mo:
            self._event(it, "version", version, "proposed", "accepted", why)
            for s in self.old:
                if s["id"] not in new_ids:
                    self._event(it, "skill", s["id"], "active", "retired", f"not in version {version}")
            for s in self.new:
                if s["id"] not in old_ids:
                    self._event(it, "skill", s["id"], "proposed", "active", f"version {version} accepted")
            self.old, self.post["old"], self.version = self.new, self.post["new"], version
            self.n["accepted"] += 1
            out = "accept"
        else:
            self._event(it, "version", version, "proposed", "reverted", why)
            for s in self.new:
                if s["id"] not in old_ids:
                    self._event(it, "skill", s["id"], "proposed", "discarded", f"version {version} reverted")
            self.n["reverted"] += 1
            out = "revert"
        self.tests.append({v: [tuple(x[v]) for x in self.test] for v in ("new", "old")})
        self.memory, _ = choose_memory(self.tests, self.grid, self.a0, self.b0)
        self._start_test(None, None)
        return out

    def _start_test(self, new, it):  # a proposal (new set, iteration) or none: the new version starts at the prior
        self.new, self.since, self.post["new"] = new, it, [0.0, 0.0]
        self.test, self.test_iters, self.test_eps = [], 0, 0

    def _event(self, it, what, ident, frm, to, reason):
        self.events.append({"iteration": it, what: ident, "from": frm, "to": to, "reason": reason})

    # --- the creator

    def bonus(self, steps, eps):
        """ReSkill shapes no reward (train.py calls every baseline's bonus before the advantages)."""

    def update(self, it, eps, steps, generate):
        """After a rollout (train.py, every rank, gathered data): the test's posteriors and decision, then the creator."""
        return {**self.observe(it, eps), **self.propose(it, eps, steps, generate)}

    def propose(self, it, eps, steps, generate):
        """With no test running (and it % create_every == 0): write skills from this iteration's successes with
        generate(list of user messages) -> list of texts (greedy) and propose the revised set (departures 1-3).
        eps: every rank's episodes (.traj unique, .won, .task_text, .task_type); steps: theirs (.traj, .step,
        .action, .anchor). Returns metrics."""
        out = dict(proposed=0, create_prompts=0, create_dropped=0, create_unchanged=0)
        if self.new is not None or it % self.create_every != 0:
            return out
        assert len({e.traj for e in eps}) == len(eps), "episode traj ids repeat across ranks: give each its traj_base"
        by_key = {}
        for e in eps:
            by_key.setdefault(e.task_type or e.task_text, []).append(e)
        rate = lambda k: sum(e.won for e in by_key[k]) / len(by_key[k])
        keys = sorted((k for k in by_key if any(e.won for e in by_key[k])), key=lambda k: (rate(k), k))
        keys = keys[:self.create_count]
        wins = {e.traj for k in keys for e in by_key[k] if e.won}
        acts = mine.paths([s for s in steps if s.traj in wins])
        picks = []
        for k in keys:
            e = min((e for e in by_key[k] if e.won), key=lambda e: (len(acts.get(e.traj, [])), e.traj))
            done = acts.get(e.traj, [])
            assert done and [t for t, _, _ in done] == list(range(len(done))), f"trajectory {e.traj}: steps missing"
            picks.append((k, e, [a for _, a, _ in done]))
        if not picks:
            return out
        texts = generate([mine.mining_prompt(self.description, e.task_text, acts_) for _, e, acts_ in picks])
        assert len(texts) == len(picks), "generate must answer every prompt"
        new, added, notes = [dict(s) for s in self.old], [], []
        for (k, e, _), text in zip(picks, texts):
            sk = mine.parse_skill(text)
            if sk is None:
                out["create_dropped"] += 1
                continue
            sk = dict(id=self.next_id, key=k, trigger="always", created=it, **sk)
            if any(_same(s, sk) for s in new):
                out["create_unchanged"] += 1
                continue
            self.next_id += 1
            same = [j for j, s in enumerate(new) if s["key"] == k and s["trigger"] == sk["trigger"]]
            notes.append(f"skill {sk['id']} ({k}, from trajectory {e.traj})"
                         + (f" replaces {new[same[0]]['id']}" if same else ""))
            if same:
                new[same[0]] = sk
            else:
                new.append(sk)
            added.append(sk["id"])
        while len(new) > self.max_active:  # the oldest skill not written now goes
            victim = min((s for s in new if s["id"] not in added), key=lambda s: (s["created"], s["id"]))
            notes.append(f"drops {victim['id']} (oldest, cap {self.max_active})")
            new.remove(victim)
        out.update(create_prompts=len(picks))
        self.n["created"] += len(added)
        self.n["dropped"] += out["create_dropped"]
        if not added:
            return out
        self.n["proposals"] += 1
        self._start_test(new, it)
        self._event(it, "version", self.n["proposals"], None, "proposed", "; ".join(notes))
        for sid in added:
            self._event(it, "skill", sid, None, "proposed", f"in version {self.n['proposals']}")
        out["proposed"] = 1
        return out

    # --- saving and reading

    def counts(self):
        return dict(active=len(self.old), proposed=len(self.new) if self.new is not None else 0,
                    proposals=self.n["proposals"], accepted=self.n["accepted"], reverted=self.n["reverted"])

    def state(self):
        """JSON-able (inf as the string "inf"); the configuration comes from the flags again on from_state."""
        num = lambda M: "inf" if math.isinf(M) else M
        return dict(old=self.old, new=self.new, post=self.post, test=self.test, test_iters=self.test_iters,
                    test_eps=self.test_eps, since=self.since, tests=self.tests, events=self.events,
                    next_id=self.next_id, version=self.version, n=self.n, memory=num(self.memory))

    @classmethod
    def from_state(cls, a, description, d):
        rs = cls(a, description)
        for k in ("old", "new", "test", "test_iters", "test_eps", "since", "tests", "events", "next_id", "version"):
            setattr(rs, k, d[k])
        rs.post, rs.n, rs.memory = {v: list(x) for v, x in d["post"].items()}, dict(d["n"]), float(d["memory"])
        rs.tests = [{v: [tuple(x) for x in t[v]] for v in ("new", "old")} for t in rs.tests]
        assert len(rs.old) <= rs.max_active and (rs.new is None or len(rs.new) <= rs.max_active), \
            "saved skill set larger than --rs-max-active"
        return rs

    def markdown(self):
        """A readable export: the accepted set, the pending proposal, the posteriors and the events."""
        def skills(ss):
            out = []
            for s in ss:
                out += ["", f"### Skill {s['id']} (key {s['key']}, trigger {s['trigger']!r}, written at iteration "
                            f"{s['created']})", ""] + [f"- {ln}" for ln in mine.skill_text(s).splitlines()]
            return out
        al, be = self.posterior("old")
        lines = ["# ReSkill", "", f"memory M = {self.memory:g}; {self.n['proposals']} proposals, {self.n['accepted']} "
                 f"accepted, {self.n['reverted']} reverted", "",
                 f"## Version {self.version} (accepted): {len(self.old)} skills, Beta({al:.2f}, {be:.2f})"]
        lines += skills(self.old)
        if self.new is not None:
            al, be = self.posterior("new")
            lines += ["", f"## Version {self.n['proposals']} (proposed at iteration {self.since}): Beta({al:.2f}, "
                          f"{be:.2f}), {self.test_iters} iterations, {self.test_eps} episodes, "
                          f"P(new better) clamped {self.p_new():.3f}"] + skills(self.new)
        lines += ["", "## Events", ""] + [
            f"- iteration {e['iteration']}: {'version' if 'version' in e else 'skill'} "
            f"{e.get('version', e.get('skill'))} {e['from']} -> {e['to']} ({e['reason']})" for e in self.events]
        return "\n".join(lines) + "\n"
