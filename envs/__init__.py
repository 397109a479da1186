"""
envs: the text environments, the contract every env meets (the interface the rollout code uses), the registry.

The paper's benchmarks, ALFWorld and WebShop, need data downloads (and Java for
WebShop's search index) that these machines cannot do. So the project ships two
offline, procedurally generated stand-ins that follow their text conventions,
action grammars and reward definitions (docs/algorithm.md, "Environments"):

    household   ALFWorld-like: six task types, receptacles, "Nothing happens."   envs/household.py
    shop        WebShop-like: search / results / item pages, WebShop's reward    envs/shop.py

and an adapter to the real thing where its engine is installed (pip install 'textworld[pddl]==1.7.0'
alfworld==0.4.2): official games if downloaded, else games generated offline in ALFWorld's format:

    alfworld    ALFWorld's own TextWorld engine, AlfredDemangler + AlfredInfos   envs/alfworld.py

and a third, small one, written as a newcomer would write an env (one file plus a registry line):

    cafe        a barista: recipes of several steps at stations, an order served once   envs/cafe.py

Each module's docstring is its contract (what it models, the conventions it
follows, and for a stand-in a numbered list of departures from the real benchmark).

Adding an env: write envs/<name>.py with the required attributes below (envs/cafe.py is a complete
example), add `"<name>": "envs.<name>"` to REGISTRY, run `pytest tests/test_env_contract.py -k <name>`.
train.py, rollouts, GiGPO, SIRI's mining and lifecycle, checkpoints and evaluation need no change. For SIRI
with the embedded policy (no --model) also declare SKILLS (and optionally WRONG_SKILL, BOOTSTRAP).

The contract every env meets
----------------------------
An env is one module, registered by one line in REGISTRY below. tests/test_env_contract.py checks every rule
here on every registered env, so a new env gets the whole check by being registered.

    suite = envs.make("household", "train", n_tasks=200, seed=0, room_size="small")
    env = suite.new_env()                    # cheap Python object; make G x N of them
    obs = env.reset(suite.tasks[0])          # -> Observation
    obs, reward, done, info = env.step("go to countertop 1")
    env.expert_action()                      # scripted expert's next action (privileged)

Module attributes, required:
    Env              a class constructed without arguments, with the methods below
    make_tasks(split, n, seed=0, **options)  the task list of a split (options: the env's own, e.g. room_size)
    DESCRIPTION      the prompt's "<env>" ("You are an expert agent operating in <DESCRIPTION>.")
    MAX_STEPS        step cap: at step MAX_STEPS an unfinished episode ends, done, info["truncated"] = True
    DEFAULT_N_TASKS  {split: tasks when make() gets n_tasks=None}, for every split in SPLITS
and conventions, with their defaults where the module does not declare them (read through `module_attr`):
    NOTHING          what a bad action (inadmissible, malformed, empty, not a string) answers: this text
                     (default "Nothing happens.", TextWorld's), or None: the current observation again (shop)
    FLAGS            {make_tasks option: train.py flag attribute} that train.py passes from its command line
                     (default {}; shop: {"data": "webshop_data"})
The embedded policy (bootstrap.py) reads, all optional:
    SKILLS           {skill key: dict(when=[...], strategy=[...], steps=[...])}: a correct skill per key, each
                     field a list of phrasings. Without it bootstrap.py warns loudly: the built policy never sees
                     a skill block or a mining example, so SIRI cannot mine with it.
    WRONG_SKILL      {skill key: another key}: the misleading skill of demonstrations and of --skills
    TYPE_NAMES       {short name: skill key}: names bootstrap.py --rare accepts besides the keys themselves
    BOOTSTRAP        bootstrap.py settings that differ from bootstrap.DEFAULTS for this env (rare, demos, ...)
    BOOTSTRAP_OPTIONS  bootstrap.py settings passed on to make_tasks (household: ("room_size",))
    entity_tokens(tasks)  whole-string tokens for bootstrap's --entity-tokens 1 (shop: ASINs); without it
                     --entity-tokens 1 keeps each numbered entity ("apple 1") one pre-token
    skill_variant(skill, key), Env.variant_opening(), Env.naive_action(), Env.naive_done(action): household's
                     target-first variant and naive demonstrator (bootstrap.demonstrations); an env without
                     them has no variant, and its expert plays the naive episodes

Tasks: small frozen dataclasses (JSON-able via dataclasses.asdict). Task i of a split is a deterministic
function of (seed, split, i) only, so `make(..., n_tasks=k)` is a prefix of `make(..., n_tasks=m)` for k < m,
and resetting N envs with one task gives N identical start states (GiGPO's group). Every task has
    task_type        str: what evaluation reports success by (household: ALFWorld's six goals; shop: category)
    skill_key        optional str: the key SIRI files and retrieves the task's skills under, for an env whose
                     types group different procedures (two recipes both "coffee"); default task_type.
                     mine.py and train.py read it through `skill_key(task)` only.

Env methods:
    reset(task) -> Observation
    step(action) -> (Observation, reward, done, info). Never raises for any action (None, 42, 10k characters):
        a bad action changes nothing (state_key, admissible list), answers per NOTHING, counts as a step, and
        has reward 0 and info["action_admissible"] False. Stepping a finished episode is an AssertionError.
    state_key() -> hashable exact state (no step counter, no last feedback): equal iff the states are equal.
    expert_action(observable=False) -> the next action of a scripted expert that solves the task from ANY
        reachable state: it replans every step, because bootstrap.py's demonstrations play a random action
        at a quarter of the steps and hand the episode back to it. The privileged expert (default) may read
        the true state and must win every task, also after random actions. observable=True: an expert that
        decides from what the agent has seen (what a policy can imitate from the prompt); it may lose some
        tasks (shop: ~38%) but also replans from any state. An env without such an expert may ignore the
        flag (alfworld). Expert actions are admissible, or fill in an admissible template.

Observation fields (a NamedTuple, so cheap and picklable):
    text        what the agent reads this turn (ALFWorld feedback / WebShop page)
    anchor      GiGPO's anchor: a deterministic function of the env state and the last feedback, with no
                history and no step counter, so N envs reset to one task and driven into the same situation
                give equal anchors. The built-ins use the raw current observation, exactly `text`, as GiGPO
                does on the real envs: two different states can then share an anchor when their raw
                observations coincide (e.g. "Nothing happens."); `env.state_key()` tells them apart.
    admissible  tuple of admissible action strings for the current state; an entry holding "<...>" is a
                template the agent fills in (shop: "search[<your query>]")
    task        the task text ("put a clean apple in fridge." / the WebShop instruction)
    task_type   the task's task_type

info (from step): won (bool), truncated (bool: cut by the step cap, no terminal reward), action_admissible
(bool: was the action valid here), steps (int); optional: score (float in [0,1], e.g. WebShop's partial
reward; default float(won), where rollout.py reads it).

Rewards: the env's own reward is returned but not trained on: rollout.py gives 10 x won at the winning
step and 0 elsewhere (episodes cut by the step cap get none). household returns 1.0 at the winning step,
shop WebShop's [0,1] purchase reward at `click[buy now]`.
"""

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

SPLITS = ("train", "eval_seen", "eval_unseen")
TEMPLATE = re.compile(r"<[^<>\[\]]+>")  # the slot of an admissible template: "search[<your query>]"


class Observation(NamedTuple):
    text: str
    anchor: str
    admissible: tuple
    task: str
    task_type: str


# name -> module (the contract above). Imported lazily so that importing `envs` costs nothing and the
# submodules can import Observation from here.
REGISTRY = {"household": "envs.household", "shop": "envs.shop", "alfworld": "envs.alfworld",
            "cafe": "envs.cafe"}

# conventions an env module may leave out, with their defaults (the contract above)
DEFAULTS = dict(NOTHING="Nothing happens.", FLAGS={}, SKILLS={}, WRONG_SKILL={}, TYPE_NAMES={}, BOOTSTRAP={},
                BOOTSTRAP_OPTIONS=())


def module(name):
    """The module of registered env `name`."""
    assert name in REGISTRY, f"unknown env {name!r}; have {sorted(REGISTRY)}"
    return importlib.import_module(REGISTRY[name])


def module_attr(name, attr):
    """A module attribute of env `name`, or its documented default (DEFAULTS) when the module has none."""
    return getattr(module(name), attr, DEFAULTS.get(attr))


def skill_key(task):
    """The key SIRI files and retrieves a task's skills under: task.skill_key where the env gives one, else
    task.task_type ("" for a task with neither)."""
    return getattr(task, "skill_key", None) or getattr(task, "task_type", None) or ""


def flag_options(name, args):
    """make_tasks options of env `name` from train.py's parsed flags (the module's FLAGS)."""
    return {opt: getattr(args, flag) for opt, flag in module_attr(name, "FLAGS").items()}


@dataclass
class Suite:
    """A split's task list plus a factory for env instances configured to play them."""
    name: str
    split: str
    tasks: list
    description: str  # slots into the prompt (rollout.Prompter): "You are an expert agent operating in <description>."
    max_steps: int
    env_cls: Callable[[], Any]

    def new_env(self):
        return self.env_cls()


def make(name, split, n_tasks=None, seed=0, **env_kwargs):
    """Build the task list of one split of env `name` and a factory for its envs.

    env_kwargs go to the task generator (household: room_size; shop: catalog_seed,
    products_per_type, or data = WebShop's data dir (envs/webshop_data.py), human_goals, full;
    alfworld: data, games; cafe: none). Tasks carry everything an env needs, so envs take no arguments.
    """
    assert split in SPLITS, f"unknown split {split!r}; have {SPLITS}"
    mod = module(name)
    n = mod.DEFAULT_N_TASKS[split] if n_tasks is None else n_tasks
    tasks = mod.make_tasks(split, n, seed=seed, **env_kwargs)
    return Suite(name=name, split=split, tasks=tasks, description=mod.DESCRIPTION,
                 max_steps=mod.MAX_STEPS, env_cls=mod.Env)
