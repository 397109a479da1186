"""
rollout.py: the agent-environment protocol (docs/algorithm.md, "Agent-environment protocol"), batched
multi-turn rollouts through model.generate, and evaluation.

Contract
- `Prompter` builds each turn's prompt (task, the last k observation/action
  pairs, the current observation, the admissible actions, the format
  instruction) as one user message through the tokenizer's chat template. An
  optional skill block sits at a fixed place (after the task line). The prompt
  is tokenized in pieces around that place, so removing the block leaves the
  plain prompt's ids exactly (SIRI's teacher and student contexts).
- `project(text, think)` is the GiGPO code's action projection: lowercase, the
  text between the first <action> and </action> is the action; a missing tag
  makes the step invalid and sends the last 30 characters instead; in the think
  format a missing <think>...</think> also makes it invalid, and so do CJK
  characters. Validity (format) and admissibility (the env's judgement) differ:
  a well-formed inadmissible action is valid and the env answers
  "Nothing happens." / leaves the page unchanged.
- `rollout(...)` plays G task groups x N envs in lockstep: every turn one
  batched generate call over the envs still running. Each env step becomes a
  `Step` sample (prompt ids, response ids, sampled-token log-probs, reward,
  validity, anchor, group, trajectory, step index, skill). Reward is
  reward_scale x won at the winning step (10 x won by default), else 0; episodes
  cut by the step cap get none; envs that finish are not stepped again.
  An exception from env.reset / env.step (env_errors): "raise" stops with a
  RuntimeError naming the env, task, step and action; "fail" ends that episode
  as failed (Episode.env_error, counted in stats["env_errors"]) and goes on.
  An episode's score is info["score"], float(won) for an env that gives none (envs/__init__.py).
- `evaluate(...)` runs one episode per task with the plain prompt only and
  reports success (and the shop's [0,1] score) overall and per task type.

Departures from the GiGPO code
1. The prompt wording is ours (the GiGPO code's template); the GiGPO code words the
   step-0 prompt differently ("no history"), we use one template for all steps.
2. An action-only format (`think=False`, the default for tiny models) asks for
   just <action>...</action>; the GiGPO code always asks for <think> first.
"""

import re
import time
from dataclasses import dataclass

import torch

import model as M
from envs import Observation

SKILL_MARK = "\u2063SKILL\u2063"  # invisible separator: never produced by an env or a skill


def format_skill(skill):
    """The skill block: a skill's three fields (a dict with when / strategy / steps; docs/algorithm.md, "Mining")."""
    return (f"A skill that may help:\nWhen to apply: {skill['when']}\nStrategy: {skill['strategy']}\n"
            f"Key steps: {skill['steps']}\n")


def chat_ids(tok, text):
    """Ids of one user message through the chat template, ready for the assistant's answer."""
    return tok(tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"]


class Prompter:
    """Token ids of each turn's prompt for one tokenizer and env."""

    def __init__(self, tokenizer, env_description, history=2, think=False, max_prompt_tokens=4096):
        self.tok, self.env, self.history, self.think, self.max_prompt = tokenizer, env_description, history, think, max_prompt_tokens
        self._skill_ids = {}

    def text(self, task, t, past, obs, admissible, skill_mark=True):
        """The user message. past: list of (observation, action) before this step."""
        task = task.rstrip(".")
        recent = past[-self.history:] if self.history > 0 else []
        hist = " ".join(f"[Observation {t - len(recent) + j + 1}: '{o}', Action {t - len(recent) + j + 1}: '{a}']"
                        for j, (o, a) in enumerate(recent))
        fmt = ("Think step by step inside <think></think>, then output one admissible action inside "
               "<action></action>." if self.think else "Output one admissible action inside <action></action>.")
        return (f"You are an expert agent operating in {self.env}. Your task is to: {task}.\n"
                + (SKILL_MARK if skill_mark else "")
                + f"Prior to this step you have taken {t} step(s)."
                + (f" The most recent {len(recent)} observations and your actions: {hist}" if recent else "")
                + f"\nYou are now at step {t + 1} and your current observation is: {obs}\n"
                + f"Your admissible actions are: [{', '.join(admissible)}].\n{fmt}")

    def __call__(self, task, t, past, obs, admissible, skill=None):
        """Prompt ids; with a skill (the formatted block), its ids are spliced in at the skill mark."""
        return self.render(self.text(task, t, past, obs, admissible), skill)

    def render(self, text, skill=None):
        """User message (holding SKILL_MARK) -> ids: chat template, then the pieces around the mark
        tokenized separately, so the skill block's ids are inserted without changing any other id."""
        full = self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)
        pre, mark, post = full.partition(SKILL_MARK)
        assert mark, "the prompt text lacks the skill mark"
        enc = lambda s: self.tok(s, add_special_tokens=False)["input_ids"]
        ids = enc(pre) + (self._skill(skill) if skill else []) + enc(post)
        if len(ids) > self.max_prompt:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds max_prompt_tokens={self.max_prompt} "
                             f"({text[:80]!r}...); lower --history or raise --max-prompt-tokens")
        return ids

    def _skill(self, skill):
        if skill not in self._skill_ids:
            self._skill_ids[skill] = self.tok(skill, add_special_tokens=False)["input_ids"]
        return self._skill_ids[skill]


_CJK = re.compile(r"[\u4e00-\u9fff]")


def project(text, think=False):
    """Model output -> (action, valid), as the GiGPO code's projection (docs/algorithm.md, "Agent-environment protocol")."""
    low = text.lower()
    a, b = low.find("<action>"), low.find("</action>")
    if a == -1 or b == -1 or b < a:
        return low[-30:], False
    valid = not _CJK.search(text) and (not think or ("<think>" in low and "</think>" in low))
    return low[a + len("<action>"):b].strip(), valid


# -----------------------------------------------------------------------------
# Rollouts

@dataclass
class Step:
    """One environment step = one training sample."""
    prompt: list
    response: list
    logprobs: list  # log-prob of each response token under the sampling policy, softmax(logits / temperature)
    reward: float
    valid: bool
    anchor: str
    group: int
    traj: int
    step: int
    skill: object = None  # id of the skill in the prompt, None for plain
    action: str = ""


@dataclass
class Episode:
    group: int
    traj: int
    task: object
    task_type: str
    won: bool
    score: float
    steps: int
    skill: object = None
    truncated: bool = False
    task_text: str = ""  # the task as the agent read it (household tasks have .text, shop tasks .instruction)
    env_error: bool = False  # ended by an exception in the env (env_errors="fail"), counted as failed


@dataclass
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32


ENV_ERRORS = ("raise", "fail")


def _env_error(suite, task, t, action, e):
    """The one-line RuntimeError of env_errors="raise": which env, task, step and action, and what it raised."""
    name = getattr(suite, "name", "") or type(suite).__name__
    task = task if isinstance(task, str) else repr(task)
    task = task if len(task) <= 200 else task[:197] + "..."
    where = "reset" if action is None else f"step {t} on action {action!r}"
    what = " ".join(f"{type(e).__name__}: {e}".split())  # one line even if the env's message has several
    return RuntimeError(f"env {name!r} raised at {where} of task {task!r}: {what}")


def _failed_reset(task):
    """Stand-in observation when env.reset raised (env_errors="fail"): the Episode still needs the task's text
    and type (evaluate tallies by type), taken from the task's own fields where it has the usual ones."""
    text = getattr(task, "text", None) or getattr(task, "instruction", None) or repr(task)
    kind = getattr(task, "task_type", None) or getattr(task, "category", None) or "unknown"
    return Observation("", "", (), text, kind)


@torch.no_grad()
def rollout(model, tokenizer, prompter, suite, tasks, n, sampling, generator=None, skills=None, skill_ids=None,
            traj_base=0, group_base=0, reward_scale=10.0, stop_ids=None, max_steps=0, env_errors="raise"):
    """Play len(tasks) groups of n envs each, all in lockstep. skills: per env the skill block text or None,
    or a callable (t, obs, past) -> (block or None, skill id or None) asked at every step (step-level skills,
    triggers: baselines/); a step's Step.skill is then the id it returned, the Episode's skill its skill_ids entry.
    max_steps > 0 cuts episodes earlier than the env's own cap (no terminal reward, like the env's cap).
    env_errors: "raise" (a RuntimeError naming env, task, step and action) or "fail" (that episode ends failed,
    its failing step still a sample with reward 0; the other envs go on).

    Returns (steps, episodes, stats)."""
    if env_errors not in ENV_ERRORS:
        raise ValueError(f"env_errors={env_errors!r}: must be one of {ENV_ERRORS}")
    E = len(tasks) * n
    skills = skills or [None] * E
    skill_ids = skill_ids or [None] * E
    assert len(skills) == E and len(skill_ids) == E, "one skill entry per env"
    stop_ids = stop_ids if stop_ids is not None else [tokenizer.eos_token_id]
    envs = [suite.new_env() for _ in range(E)]
    task_of = [tasks[i // n] for i in range(E)]
    obs, failed = [None] * E, [False] * E
    for i in range(E):
        try:
            obs[i] = envs[i].reset(task_of[i])
        except Exception as e:
            if env_errors == "raise":
                raise _env_error(suite, task_of[i], 0, None, e) from e
            obs[i], failed[i] = _failed_reset(task_of[i]), True
    past = [[] for _ in range(E)]
    infos = [None] * E
    live = [i for i in range(E) if not failed[i]]
    steps, gen_s, env_s, n_tokens = [], 0.0, 0.0, 0
    cap = min(max_steps, suite.max_steps) if max_steps > 0 else suite.max_steps
    for t in range(cap):
        if not live:
            break
        now = {i: skills[i](t, obs[i], past[i]) if callable(skills[i]) else (skills[i], skill_ids[i]) for i in live}
        prompts = [prompter(obs[i].task, t, past[i], obs[i].text, obs[i].admissible, now[i][0]) for i in live]
        t0 = time.perf_counter()
        out = M.generate(model, prompts, sampling.max_new_tokens, sampling.temperature, sampling.top_k,
                         sampling.top_p, stop_ids=stop_ids, generator=generator,
                         logprob_temperature=sampling.temperature if sampling.temperature > 0 else 1.0)
        gen_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        still = []
        for k, (i, resp) in enumerate(zip(live, out.lists())):
            n_tokens += len(resp)
            action, valid = project(tokenizer.decode(resp, skip_special_tokens=True), prompter.think)
            try:
                new, r, done, info = envs[i].step(action)
            except Exception as e:
                if env_errors == "raise":
                    raise _env_error(suite, obs[i].task, t, action, e) from e
                # the step stays a sample (reward 0) so steps and Episode.steps agree; the env is not stepped again
                new, done, info, failed[i] = obs[i], True, dict(won=False, score=0.0), True
            steps.append(Step(prompts[k], resp, out.logprobs[k, :len(resp)].tolist(), reward_scale * float(info["won"]),
                              valid, obs[i].anchor, group_base + i // n, traj_base + i, t, now[i][1], action))
            past[i].append((obs[i].text, action))
            obs[i], infos[i] = new, info
            if not done and t + 1 < cap:
                still.append(i)
            elif not done:
                infos[i] = dict(info, truncated=True)
        env_s += time.perf_counter() - t0
        live = still
    episodes = [Episode(group_base + i // n, traj_base + i, task_of[i], obs[i].task_type,
                        bool(infos[i] and infos[i]["won"]), float(infos[i].get("score", infos[i]["won"])) if infos[i] else 0.0,
                        len(past[i]), skill_ids[i], bool(infos[i] and infos[i].get("truncated")), obs[i].task,
                        failed[i])
                for i in range(E)]
    return steps, episodes, dict(gen_s=gen_s, env_s=env_s, gen_tokens=n_tokens, env_errors=sum(failed))


def evaluate(model, tokenizer, prompter, suite, tasks=None, temperature=0.4, batch=64, seed=0, max_new_tokens=32,
             max_steps=0, skill_of=None, env_errors="raise"):
    """Success on a task list: overall, per task type, and the mean [0,1] score. The plain prompt, unless
    skill_of (task -> skill block, a per-step callable as in rollout, or None) puts a skill in it (to measure
    skill following, or to evaluate with a skill bank). env_errors: as in
    rollout ("fail": such an episode counts as failed)."""
    tasks = suite.tasks if tasks is None else tasks
    g = torch.Generator(device=_device(model)).manual_seed(seed)
    eps = []
    for s in range(0, len(tasks), batch):
        chunk = tasks[s:s + batch]
        eps += rollout(model, tokenizer, prompter, suite, chunk, 1,
                       Sampling(temperature=temperature, max_new_tokens=max_new_tokens), generator=g, traj_base=s,
                       max_steps=max_steps, skills=[skill_of(t) for t in chunk] if skill_of else None,
                       env_errors=env_errors)[1]
    by_type = {}
    for e in eps:
        by_type.setdefault(e.task_type, []).append(e.won)
    return dict(success=sum(e.won for e in eps) / len(eps), score=sum(e.score for e in eps) / len(eps),
                n=len(eps), by_type={k: sum(v) / len(v) for k, v in sorted(by_type.items())},
                by_type_n={k: len(v) for k, v in sorted(by_type.items())})


def _device(model):
    return getattr(model, "module", model).model.embed_tokens.weight.device
