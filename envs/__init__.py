"""
envs: the two built-in text environments and the interface the rollout code uses.

The paper's benchmarks, ALFWorld and WebShop, need data downloads (and Java for
WebShop's search index) that these machines cannot do. So the project ships two
offline, procedurally generated stand-ins that follow their text conventions,
action grammars and reward definitions (docs/algorithm.md, "Environments"):

    household   ALFWorld-like: six task types, receptacles, "Nothing happens."   envs/household.py
    shop        WebShop-like: search / results / item pages, WebShop's reward    envs/shop.py

and an adapter to the real thing where its engine is installed (pip install 'textworld[pddl]==1.7.0'
alfworld==0.4.2): official games if downloaded, else games generated offline in ALFWorld's format:

    alfworld    ALFWorld's own TextWorld engine, AlfredDemangler + AlfredInfos   envs/alfworld.py

Each module's docstring is its contract (what it models, the conventions it
follows, a numbered list of departures from the real benchmark).

Common interface
----------------
    suite = envs.make("household", "train", n_tasks=200, seed=0, room_size="small")
    env = suite.new_env()                    # cheap Python object; make G x N of them
    obs = env.reset(suite.tasks[0])          # -> Observation
    obs, reward, done, info = env.step("go to countertop 1")
    env.expert_action()                      # scripted expert's next action (privileged)

Observation fields (a NamedTuple, so cheap and picklable):
    text        what the agent reads this turn (ALFWorld feedback / WebShop page)
    anchor      GiGPO's anchor: the raw current observation, no history, no step
                counter. It is exactly `text`: a deterministic function of the env
                state and the last feedback, so N envs reset to one task and driven
                into the same situation give equal anchors. Like GiGPO on the real
                envs, two different states can share an anchor when their raw
                observations coincide (e.g. "Nothing happens."); `env.state_key()`
                gives an exact, hashable world-state key if one is ever needed.
    admissible  tuple of admissible action strings for the current state
    task        the task text ("put a clean apple in fridge." / the WebShop instruction)
    task_type   household: one of ALFWorld's six goal names; shop: the goal's product category

info (from step): won (bool), score (float in [0,1]), truncated (bool: cut by the
step cap, no terminal reward), action_admissible (bool: was the action valid here), steps.

Rewards are the env's own: household returns 1.0 at the winning step (0 otherwise);
shop returns WebShop's [0,1] purchase reward at `click[buy now]`. The RL code turns
these into `10 x won` (rollout.py). Episodes cut by the step cap (50 / 15) end with
done=True, reward 0 and info["truncated"] = True.

Tasks are small frozen dataclasses (JSON-able via dataclasses.asdict): task i of a
split is a deterministic function of (seed, split, i) only, so `make(..., n_tasks=k)`
is a prefix of `make(..., n_tasks=m)` for k < m, and resetting N envs with one task
gives N identical start states (GiGPO's group).
"""

import importlib
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

SPLITS = ("train", "eval_seen", "eval_unseen")


class Observation(NamedTuple):
    text: str
    anchor: str
    admissible: tuple
    task: str
    task_type: str


# name -> module implementing: Env, make_tasks(split, n, seed, **kw), DESCRIPTION,
# MAX_STEPS, DEFAULT_N_TASKS (dict split -> n). Imported lazily so that importing
# `envs` costs nothing and the submodules can import Observation from here.
REGISTRY = {"household": "envs.household", "shop": "envs.shop", "alfworld": "envs.alfworld"}


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
    alfworld: data, games). Tasks carry everything an env needs, so envs take no arguments.
    """
    assert name in REGISTRY, f"unknown env {name!r}; have {sorted(REGISTRY)}"
    assert split in SPLITS, f"unknown split {split!r}; have {SPLITS}"
    mod = importlib.import_module(REGISTRY[name])
    n = mod.DEFAULT_N_TASKS[split] if n_tasks is None else n_tasks
    tasks = mod.make_tasks(split, n, seed=seed, **env_kwargs)
    return Suite(name=name, split=split, tasks=tasks, description=mod.DESCRIPTION,
                 max_steps=mod.MAX_STEPS, env_cls=mod.Env)
