"""
baselines/d2skill.py: D2Skill (arXiv 2603.28716; docs/algorithm.md, "Baselines"), a dual-granularity skill bank trained with the policy.

Contract
- Two pools of skills with SIRI's three fields (rollout.format_skill): task skills, retrieved once per episode
  from "task type + task text", and step skills, retrieved at every step from "task type + task text + current
  observation". Each group of N rollouts: the first half plain, the second half with skills (mine.paired_split).
- Y_i = won (0/1) of trajectory i = its return / reward_scale. Utility u of a skill, a running average
  u <- (1 - w) u + w x (u starts at 0, an untried skill is worth the plain prompt), once per iteration with x =
  the mean over this iteration's uses of: the group gap mean Y(skill half) - mean Y(plain half) for a task
  skill (the groups whose skill half saw it), the credit c_i = Y_i - mean Y(plain half of i's group) for a step
  skill (the trajectories that saw it at least once).
- Retrieval, per pool: sim = TF-IDF cosine; skills with sim >= min_sim, the best `candidates` by sim, re-ranked
  by sim_w * sim + (1 - sim_w) * (u + c * sqrt(log(1 + N) / (1 + n))), n = the skill's uses, N = its pool's
  total; keep the best top_k (ties: the older skill). The prompt gets the task skills' blocks, then the step
  skills', concatenated; the step's skill id is the tuple of their ids (None: no skill).
- Policy bonus: lambda * c_i added to the reward of the last step of each skill-half trajectory that saw a
  skill, c_i in reward units (its return - the plain half's mean return). Plain trajectories get nothing.
- Reflection: on groups with success rate <= reflect_below, the policy writes two skills from the group's best
  trajectory, in mine.mining_prompt (the only prompt the embedded policy knows): a task skill from all its
  actions, and a step skill from its actions from step t* on, keyed by its observation at t*. t* = the latest
  step at which a failed rollout of the group, still at the success's observation, acted differently (0 if
  none): the deepest decision that separated success from failure (an early one is the task skill's job).
  Answers parse with mine.parse_skill; failures are dropped and counted, an exact duplicate in its pool (same
  type, task, observation and fields) is skipped.
- Pruning, every prune_every iterations: a pool over `capacity` loses its lowest-utility skills (ties: the
  older) until it fits, skills younger than `young` iterations are never pruned. Pruned skills are deleted.
- Evaluation (eval_skill_of): the same retrieval without the exploration term; no bonus, no bank updates.

Per iteration, train.py (every rank the same calls, on the same gathered data, so the banks stay equal):
    skills, ids = d2.assign(it, tasks, N, rng, describe)   # all G x N envs; slice per rank like SIRI's
    steps, eps, _ = R.rollout(..., skills=my_slice(skills), skill_ids=my_slice(ids))
    d2.bonus(steps, eps)                                    # rank-local, in place, BEFORE the advantages
    m = d2.update(it, all_eps, all_steps, generate)         # gathered: observe (utilities, pruning), then reflect;
                                                            # steps need only .traj .step .action .anchor .skill;
                                                            # generate must give every rank the same texts
Flags (FLAGS; train.py adds them to its argparse): --d2-lambda 1.0, --d2-ema 0.5, --d2-reflect-below 0.5,
--d2-reflect-failed 0, --d2-candidates 10, --d2-sim-weight 0.1, --d2-explore 0.05, --d2-top-k 1,
--d2-min-sim 0.2, --d2-capacity 300, --d2-prune-every 5, --d2-young 10. Paper numbers except top-k and min-sim.

Departures from the paper
1. Similarity is lexical, TF-IDF cosine over lowercase words without digits (object ids), idf from the pool's
   own skills: no embedding model can be downloaded here. Cosine (unlike BM25) lies in [0, 1] like the paper's
   embedding cosine, so the 0.1 * sim term and a floor keep their meaning. The floor is 0.2, not 0.7: lexical
   cosine is lower than embedding cosine. Measured once by an ad-hoc script (not in the repo, indicative only):
   task queries of 60 train tasks against task-skill docs of 60 others
   (type + task + a 'when' sentence): a 0.2 floor keeps 94% (household) / 80% (shop) of the same-type pairs and
   15% / 12% of the other-type ones (0.1: 100% / 100% and 51% / 70%; 0.3: 82% / 55% and 4% / 1%).
2. top_k defaults to 1 per pool (paper 3 ALFWorld, 1 WebShop): the embedded tiny policy (bootstrap.py) was
   trained with one skill block in the prompt; with both pools a prompt already holds up to two.
3. Reflection starts from a success (the group's best trajectory): the embedded policy was only trained to
   summarise successes (mine.mining_prompt says "This trajectory solved the task"). The paper also reflects on
   failures; groups without a success are skipped and counted (--d2-reflect-failed 1 uses the best failure).
   The paper's reflection prompt writes task and step skills; ours is mine.mining_prompt twice (the whole
   success, and its tail from t*). The reflector is the policy ("self") or whatever `generate` train.py passes.
4. Y is success (0/1), so utilities live in [-1, 1] next to sim in [0, 1]; the bonus is in reward units (the
   return as rollout gives it, 10 x won), so lambda 1 can double a success's reward. The invalid-format
   penalty is not part of Y (gigpo applies it later); the shop's [0, 1] score is not either (only success).
5. The running average takes one step per iteration on the mean of that iteration's gaps / credits, so the
   order of groups within an iteration does not matter.
6. When the bank is empty, the whole group plays plain (nothing to validate, no bonus).
"""

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

import mine
import rollout as R

FLAGS = [  # (flag, type, default, help); dest = flag[2:] with '-' -> '_'
    ("--d2-lambda", float, 1.0, "D2Skill: return bonus lambda * c_i (reward units) on skill-half trajectories (paper 1)"),
    ("--d2-ema", float, 0.5, "D2Skill: utility running-average weight w, u <- (1 - w) u + w x (paper 0.5)"),
    ("--d2-reflect-below", float, 0.5, "D2Skill: reflect on groups with success rate <= this (paper 0.5)"),
    ("--d2-reflect-failed", int, 0, "D2Skill: 1 = reflect on groups without a success too, from their best failure"),
    ("--d2-candidates", int, 10, "D2Skill: retrieval candidates by similarity before the re-ranking (paper 10)"),
    ("--d2-sim-weight", float, 0.1, "D2Skill: re-rank = w sim + (1 - w)(utility + exploration) (paper 0.1)"),
    ("--d2-explore", float, 0.05, "D2Skill: exploration c * sqrt(log(1 + N) / (1 + n)) in the re-rank (paper 0.05)"),
    ("--d2-top-k", int, 1, "D2Skill: skills kept per pool (paper 3 ALFWorld / 1 WebShop; 1: the embedded policy "
                           "was trained with one skill block)"),
    ("--d2-min-sim", float, 0.2, "D2Skill: TF-IDF cosine floor of retrieval (paper: embedding cosine 0.7)"),
    ("--d2-capacity", int, 300, "D2Skill: skills per pool above which pruning removes the lowest utility (paper 300)"),
    ("--d2-prune-every", int, 5, "D2Skill: prune every this many iterations (paper 5)"),
    ("--d2-young", int, 10, "D2Skill: skills younger than this many iterations are never pruned (paper 10)"),
]
POOLS = ("task", "step")
TAG = "d2"  # Episode.skill of a skill-half rollout (mine.paired_deltas: one id per group)


@dataclass
class Skill:
    id: int
    pool: str  # "task" or "step"
    task_type: str
    task: str  # the task text it was reflected from
    obs: str  # step skills: the observation it is keyed by; "" for task skills
    when: str
    strategy: str
    steps: str
    created: int  # iteration
    utility: float = 0.0
    uses: int = 0  # groups (task skill) / trajectories (step skill) its utility was updated from

    @property
    def fields(self):  # what rollout.format_skill takes
        return dict(when=self.when, strategy=self.strategy, steps=self.steps)

    @property
    def doc(self):  # what retrieval compares the query with
        return f"{self.task_type} {self.task} {self.obs} {self.when}"


def words(text):
    """Lowercase words, digits dropped ('cabinet 1' -> ['cabinet'])."""
    return re.findall(r"[a-z]+", text.lower().replace("_", " "))


def tfidf_index(docs):
    """(vocab {word: column}, idf (V,), rows (D, V) L2-normalised TF-IDF); idf = log((1 + D) / (1 + df)) + 1."""
    bags = [Counter(words(d)) for d in docs]
    vocab = {w: j for j, w in enumerate(sorted(set().union(*bags)))}
    df = np.zeros(len(vocab))
    for b in bags:
        df[[vocab[w] for w in b]] += 1
    idf = np.log((1 + len(docs)) / (1 + df)) + 1
    rows = np.zeros((len(docs), len(vocab)))  # (D, V)
    for i, b in enumerate(bags):
        for w, c in b.items():
            rows[i, vocab[w]] = c * idf[vocab[w]]
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return vocab, idf, rows / np.where(norm > 0, norm, 1.0)


def cosine(index, query, n_docs):
    """(D,) TF-IDF cosine of the query with every doc; query words unseen in the docs count in its norm only."""
    vocab, idf, rows = index
    q, unseen = np.zeros(len(vocab)), 0.0
    for w, c in Counter(words(query)).items():
        if w in vocab:
            q[vocab[w]] = c * idf[vocab[w]]
        else:
            unseen += (c * (math.log(1 + n_docs) + 1)) ** 2  # df 0
    qn = math.sqrt(float(q @ q) + unseen)
    return rows @ q / qn if qn > 0 else np.zeros(len(rows))


class D2Skill:
    """The two pools, their utilities, retrieval, reflection and pruning; train.py's duck-typed interface."""

    def __init__(self, a, description):
        (self.lam, self.ema, self.reflect_below, self.reflect_failed, self.candidates, self.sim_w, self.explore,
         self.top_k, self.min_sim, self.capacity, self.prune_every, self.young) = (
            t(getattr(a, f[2:].replace("-", "_"))) for f, t, _, _ in FLAGS)
        mine.paired_split(a.group_size)  # asserts an even group size
        assert 0 < self.ema <= 1 and self.top_k >= 1 and self.candidates >= 1, "need 0 < ema <= 1, k, cand >= 1"
        self.description = description
        self.skills, self.events, self.next_id, self._index = {}, [], 0, {}  # skills: id -> Skill, creation order

    # ---------------------------------------------------------------- the bank

    def add(self, pool, skill, task_type, task, obs, it, reason):
        """A parse_skill dict into a pool; returns its id, or None for an exact duplicate."""
        assert pool in POOLS, f"pool {pool!r} is not one of {POOLS}"
        s = Skill(self.next_id, pool, task_type, task, obs if pool == "step" else "", created=it,
                  **{k: skill[k] for k in ("when", "strategy", "steps")})
        if any((x.pool, x.task_type, x.task, x.obs, x.fields) == (s.pool, s.task_type, s.task, s.obs, s.fields)
               for x in self.skills.values()):
            return None
        self.skills[s.id], self.next_id = s, self.next_id + 1
        self.events.append(dict(iteration=it, skill=s.id, **{"from": None, "to": pool}, reason=reason))
        self._index.pop(pool, None)
        return s.id

    def pool(self, pool):
        return [s for s in self.skills.values() if s.pool == pool]

    def retrieve(self, pool, query, explore=True):
        """The top_k skills of a pool for a query text (module docstring), best first; [] if none passes."""
        skills = self.pool(pool)
        if not skills:
            return []
        if pool not in self._index:  # rebuilt only after an add or a prune
            self._index[pool] = tfidf_index([s.doc for s in skills])
        sim = cosine(self._index[pool], query, len(skills))
        near = sorted((i for i in range(len(skills)) if sim[i] >= self.min_sim), key=lambda i: (-sim[i], skills[i].id))
        total = sum(s.uses for s in skills)

        def score(i):
            bonus = self.explore * math.sqrt(math.log(1 + total) / (1 + skills[i].uses)) if explore else 0.0
            return self.sim_w * sim[i] + (1 - self.sim_w) * (skills[i].utility + bonus)
        best = sorted(near[:self.candidates], key=lambda i: (-score(i), skills[i].id))
        return [skills[i] for i in best[:self.top_k]]

    def _skill_fn(self, task_type, task, explore):
        """The per-step callable rollout asks: task skills once (first call / t == 0), step skills every step."""
        cache = []

        def skill_at(t, obs, past):
            if t == 0 or not cache:
                cache[:] = self.retrieve("task", f"{task_type} {task}", explore)
            chosen = cache + self.retrieve("step", f"{task_type} {task} {obs.text}", explore)
            if not chosen:
                return None, None
            return "".join(R.format_skill(s.fields) for s in chosen), tuple(s.id for s in chosen)
        return skill_at

    def assign(self, it, tasks, group_size, rng, describe):
        """Per env (task-major, env i plays tasks[i // group_size]): (skills, skill_ids). The first half of each
        group plain (None, None), the second half a _skill_fn callable tagged TAG; all plain while the bank is
        empty. rng is not used: retrieval is deterministic (the exploration term is a count bonus)."""
        skills, ids = [], []
        for task in tasks:
            key, text = describe(task)
            for use in mine.paired_split(group_size):
                use = use and bool(self.skills)
                skills.append(self._skill_fn(key, text, explore=True) if use else None)
                ids.append(TAG if use else None)
        return skills, ids

    def eval_skill_of(self, describe):
        """task -> the per-step callable (no exploration term), or None while the bank is empty."""
        def skill_of(task):
            return self._skill_fn(*describe(task), explore=False) if self.skills else None
        return skill_of

    # ---------------------------------------------------------------- after a rollout

    def bonus(self, steps, eps):
        """In place: + lambda * (return_i - mean return of the plain half) on the last step of every skill-half
        trajectory that saw a skill. Rank-local: each group's episodes and steps are all here."""
        ret, last, saw = {}, {}, set()
        for k, s in enumerate(steps):
            ret[s.traj] = ret.get(s.traj, 0.0) + s.reward
            if s.traj not in last or s.step > steps[last[s.traj]].step:
                last[s.traj] = k
            if s.skill is not None:
                saw.add(s.traj)
        add = {}
        for es in _groups(eps).values():
            plain = [ret.get(e.traj, 0.0) for e in es if e.skill is None]
            for e in es:
                if plain and e.skill is not None and e.traj in saw:
                    add[last[e.traj]] = self.lam * (ret[e.traj] - sum(plain) / len(plain))
        for k, b in add.items():  # after all returns are summed
            steps[k].reward += b

    def observe(self, it, eps, step_skills):
        """Utilities from all ranks' episodes and (traj, step skill id) pairs, then pruning. -> metrics."""
        seen = {}  # traj -> ids of the skills in its prompts
        for traj, sid in step_skills:
            if sid is not None:
                seen.setdefault(traj, set()).update(sid)
        xs, gaps, credits = {}, [], []  # xs: skill id -> this iteration's gaps / credits
        for _, es in sorted(_groups(eps).items()):
            plain = [float(e.won) for e in es if e.skill is None]
            half = [e for e in es if e.skill is not None]
            if not plain or not half:
                continue
            base = sum(plain) / len(plain)
            gaps.append(sum(e.won for e in half) / len(half) - base)
            for sid in set().union(*(seen.get(e.traj, set()) for e in half)):
                if sid in self.skills and self.skills[sid].pool == "task":
                    xs.setdefault(sid, []).append(gaps[-1])
            for e in (e for e in half if seen.get(e.traj)):
                credits.append(e.won - base)
                for sid in seen[e.traj]:
                    if sid in self.skills and self.skills[sid].pool == "step":
                        xs.setdefault(sid, []).append(credits[-1])
        for sid, x in sorted(xs.items()):
            s = self.skills[sid]
            s.utility = (1 - self.ema) * s.utility + self.ema * sum(x) / len(x)
            s.uses += len(x)
        pruned = self.prune(it)
        mean = lambda v: sum(v) / len(v) if v else 0.0
        return dict(d2_task_skills=len(self.pool("task")), d2_step_skills=len(self.pool("step")),
                    d2_groups=len(gaps), d2_gap=mean(gaps), d2_skill_trajs=len(credits), d2_credit=mean(credits),
                    d2_updated=len(xs), d2_pruned=pruned)

    def prune(self, it):
        """Every prune_every iterations: each pool over capacity loses its lowest-utility skills that are at
        least `young` iterations old (ties: the older first). Returns how many were removed."""
        if self.prune_every <= 0 or it % self.prune_every:
            return 0
        n = 0
        for pool in POOLS:
            skills = self.pool(pool)
            old = sorted((s for s in skills if it - s.created >= self.young), key=lambda s: (s.utility, s.id))
            for s in old[:max(0, len(skills) - self.capacity)]:
                del self.skills[s.id]
                self.events.append(dict(iteration=it, skill=s.id, **{"from": pool, "to": "pruned"},
                                        reason=f"pool {len(skills)} > {self.capacity}, utility {s.utility:+.3f}"))
                self._index.pop(pool, None)
                n += 1
        return n

    def update(self, it, eps, steps, generate):
        """After a rollout (train.py, every rank, gathered data): utilities and pruning, then reflection."""
        return {**self.observe(it, eps, [(s.traj, s.skill) for s in steps]), **self.reflect(it, eps, steps, generate)}

    def reflect(self, it, eps, steps, generate):
        """New skills from groups with success rate <= reflect_below (module docstring). generate(list of user
        messages) -> list of texts, one call. -> metrics."""
        acts = mine.paths(steps)  # traj -> [(step, action, observation)]
        jobs, skipped = [], 0  # (pool, task type, task, observation, prompt)
        for g, es in sorted(_groups(eps).items()):
            if sum(e.won for e in es) / len(es) > self.reflect_below:
                continue
            best = max(es, key=lambda e: (e.won, e.score, -e.steps, -e.traj))
            path = acts.get(best.traj, [])
            if not path or (not best.won and not self.reflect_failed):
                skipped += 1
                continue
            t = _divergence(path, [acts.get(e.traj, []) for e in es if not e.won and e is not best])
            task, actions = best.task_text or str(best.task), [a for _, a, _ in path]
            jobs.append(("task", best.task_type, task, "", mine.mining_prompt(self.description, task, actions)))
            jobs.append(("step", best.task_type, task, path[t][2],
                         mine.mining_prompt(self.description, task, actions[t:])))
        texts = generate([j[-1] for j in jobs]) if jobs else []
        assert len(texts) == len(jobs), f"generate returned {len(texts)} texts for {len(jobs)} prompts"
        added = dropped = dup = 0
        for (pool, ttype, task, obs, _), text in zip(jobs, texts):
            skill = mine.parse_skill(text)
            if skill is None:
                dropped += 1
            elif self.add(pool, skill, ttype, task, obs, it, f"reflected on {task!r}") is None:
                dup += 1
            else:
                added += 1
        return dict(d2_reflect_groups=len(jobs) // 2, d2_reflect_skipped=skipped, d2_reflect_added=added,
                    d2_reflect_dropped=dropped, d2_reflect_duplicates=dup)

    # ---------------------------------------------------------------- files

    def counts(self):
        return {f"{p}_skills": len(self.pool(p)) for p in POOLS}

    def state(self):
        return dict(next_id=self.next_id, skills=[asdict(s) for s in self.skills.values()], events=self.events)

    @classmethod
    def from_state(cls, a, description, d):
        """A bank from state(); the numbers (flags) come from a, as for a fresh one."""
        b = cls(a, description)
        b.next_id, b.events = int(d["next_id"]), [dict(e) for e in d["events"]]
        for x in d["skills"]:
            s = Skill(**x)
            assert s.pool in POOLS and s.id not in b.skills and 0 <= s.id < b.next_id, f"bad skill record {x}"
            b.skills[s.id] = s
        return b

    def markdown(self):
        lines = ["# D2Skill bank", "", ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in self.counts().items())]
        for pool in POOLS:
            lines += ["", f"## {pool.capitalize()} skills"]
            for s in self.pool(pool):
                lines += ["", f"### Skill {s.id}: utility {s.utility:+.3f}, {s.uses} uses, added at iteration "
                              f"{s.created}", "", f"- Task ({s.task_type}): {s.task}"]
                lines += [f"- Observation: {' '.join(s.obs.split())}"] if pool == "step" else []
                lines += [f"- {line}" for line in mine.skill_text(s.fields).splitlines()]
        return "\n".join(lines) + "\n"


def _groups(eps):
    out = {}
    for e in eps:
        out.setdefault(e.group, []).append(e)
    return out


def _divergence(path, failed):
    """The latest step at which a failed rollout, at the same observation as `path`, took another action (each
    failure's first such step); 0 if none. path and each failed entry: sorted [(step, action, observation)]."""
    ts = []
    for other in failed:
        for (t, a, o), (_, b, p) in zip(path, other):
            if o != p:
                break  # another state: nothing to compare from here on
            if a != b:
                ts.append(t)
                break
    return max(ts, default=0)
