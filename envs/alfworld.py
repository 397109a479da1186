"""
alfworld: the real ALFWorld engine (the `alfworld` package on TextWorld's PDDL backend) behind envs' interface.

What it runs
------------
ALFWorld's own TextWorld games (Shridhar et al. 2021), played the way its AlfredTWEnv plays them: each game
file is a PddlEnv (Fast Downward computes the admissible commands and applies them) wrapped in ALFWorld's
AlfredDemangler (ALFRED ids -> "cabinet 1") and AlfredInfos (extra.gamefile). Text, commands, feedback and the
goal test are the engine's, verbatim, e.g.

    You are in the middle of a room. Looking quickly around you, you see a cabinet 2, a cabinet 1, ...

    Your task is to: clean some mug and put it in cabinet.
    > go to fridge 1        You arrive at fridge 1. The fridge 1 is closed.
    > open fridge 1         You open the fridge 1. The fridge 1 is open. In it, you see a mug 1, and a tomato 1.
    > move mug 1 to cabinet 1 ...

Needs `pip install 'textworld[pddl]==1.7.0' alfworld==0.4.2` (fast-downward-textworld compiles with
g++/cmake on first install, ~90 s). Imports are lazy: `import envs` works without them.

    python train.py --env alfworld --algo gigpo                     # generated games (or $ALFWORLD_DATA's)
    python train.py --env alfworld --alfworld-data ~/.cache/alfworld --model /path/to/Qwen2.5-1.5B-Instruct --think
    torchrun --nproc_per_node=2 train.py --env alfworld --algo gigpo --threads 1

Data and splits
---------------
    suite = envs.make("alfworld", "train", data="~/.cache/alfworld")   # official games (or $ALFWORLD_DATA)
    suite = envs.make("alfworld", "train", n_tasks=100)                # generated offline (envs/alfworld_gen.py)

Official data (`data` argument, else $ALFWORLD_DATA as set before the alfworld package was imported, since that
import sets it; "" forces generated games), as `alfworld-download` lays
it out: <data>/json_2.1.1/{train, valid_seen, valid_unseen}/<task dir>/<trial>/{traj_data.json, game.tw-pddl}.
train -> train, eval_seen -> valid_seen, eval_unseen -> valid_unseen. Tasks are the solvable games, sorted by
path, the first n (n=None, or n past the end: all; ALFWorld's 3553 / 140 / 134). Trials whose path holds
"movable" or "Sliced" are skipped, as AlfredTWEnv skips them. Data errors are raised by make(), one line each: a
missing data dir or split folder, or a trial lacking game.tw-pddl or traj_data.json (FileNotFoundError naming
what was looked for and where); a game file that is not valid JSON, not an object, or lacks its field (the game's
'grammar', the trajectory's 'task_type', one of the six) (ValueError naming the file); a games root for
generated games that is a file or not writable (ValueError).

Without official data, games are generated (alfworld_gen: same files, same layout, same engine) into
`games` (default runs/alfworld_games/gen-v1/json_2.1.1/...): task i of a split is a function of
(seed, split, i), its file written the first time an env resets to it (atomically; kept for later runs).
eval_unseen holds out floor plans and (object, receptacle) pairings that train never uses.

Interface (envs/__init__.py)
----------------------------
reset(task) -> Observation; step(action) -> (obs, reward, done, info). text: the engine's feedback, the
welcome banner cut from the first one; anchor = text (GiGPO's anchor: the raw current observation, no history);
admissible: the engine's commands, sorted, without "help" (the GiGPO code drops it too); task: the text
after "Your task is to: "; task_type: traj_data.json's. Reward 1.0 at the winning step, else 0; 50 steps at
most (then done, reward 0, info["truncated"]). An action the engine does not know gets the engine's own
"Nothing happens." and counts as a step. info: won, score (= won), truncated, action_admissible, steps.
expert_action() is Fast Downward's next planned command (TextWorld's policy_commands, replanned every step):
privileged, it knows where every object is. state_key() is the frozenset of the game's PDDL facts.
Latency on one CPU core: reset ~0.1 s (same game) to ~0.3 s (another game), step ~25 ms, and the first reset
of a generated game ~0.5 s more (planner solve + files). Envs reuse their TextWorld engines (see _FREE).

Departures from ALFWorld as the GiGPO code runs it
--------------------------------------------------
1. Actions are lowercased and their whitespace collapsed before they reach the engine (the projection
   lowercases anyway). "help" is not listed as admissible and counts as not admissible, though the engine
   still answers it with its command list.
2. The step cap is ours (AlfredTWEnv sets it on the gym env); the 10 x won reward is rollout.py's.
3. `expert_action(observable=True)` is accepted (bootstrap.py passes it) but ignored: the planner always
   reads the true state. There is no non-privileged ALFWorld expert here (the handcoded one fails pick-two).
4. Generated games: small rooms (7-10 receptacles), kitchens and bedrooms only, no sliced or movable-receptacle
   tasks, no floor lamps, templated task texts only (no human annotations: goal_desc_human_anns_prob 0, as in
   the GiGPO config). Object properties, canContain, goals and templates are the alfworld package's.
5. No domain randomization (AlfredDemangler(shuffle=False)), as ALFWorld evaluates.
6. The first observation drops the "-= Welcome to TextWorld, ALFRED! =-" line and the blank line after it
   (household's first observation has the same shape); the rest is the engine's text.
"""

import json
import os
import re
import sys
from dataclasses import dataclass

from envs import Observation
from envs import alfworld_gen as gen

MAX_STEPS = 50
DESCRIPTION = "the ALFRED Embodied Environment"  # GiGPO's ALFWorld prompt phrase (the prompt's <env>)
DEFAULT_N_TASKS = {"train": 3553, "eval_seen": 140, "eval_unseen": 134}  # ALFWorld's split sizes
FLAGS = {"data": "alfworld_data", "games": "alfworld_games"}  # make_tasks option -> train.py flag
DEFAULT_GAMES = os.path.join("runs", "alfworld_games")
# $ALFWORLD_DATA as the user set it, read at import: importing the alfworld package sets it to ~/.cache/alfworld
# when it is unset (alfworld/info.py), after which its presence says nothing.
ENV_DATA = os.environ.get("ALFWORLD_DATA", "")
BANNER = "-= Welcome to TextWorld, ALFRED! =-"
TASK_MARK = "Your task is to: "
HINT = "run `alfworld-download` (it fills ~/.cache/alfworld) and point --alfworld-data / $ALFWORLD_DATA at it, " \
       "or pass an empty data path for generated games"


def _engine_modules():
    try:
        import fast_downward  # noqa: F401  (textworld[pddl]: PddlEnv needs it)
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
        from textworld.envs import PddlEnv
    except ImportError as e:
        raise ImportError("envs/alfworld needs ALFWorld's engine: pip install 'textworld[pddl]==1.7.0' alfworld==0.4.2") from e
    return textworld, PddlEnv, AlfredDemangler, AlfredInfos


@dataclass(frozen=True)
class AlfworldTask:
    gamefile: str     # .../json_2.1.1/<split folder>/<task dir>/<trial>/game.tw-pddl
    task_type: str    # traj_data.json's task_type
    text: str         # "clean some mug and put it in cabinet."
    gen: tuple = ()   # generated games: (seed, split, i), to write the file if it is missing; () for official ones


# -----------------------------------------------------------------------------
# Task lists

def make_tasks(split, n, seed=0, data=None, games=None):
    """Official games from `data` (default $ALFWORLD_DATA, see ENV_DATA), else generated ones cached under `games`."""
    data = ENV_DATA if data is None else data
    if data:
        return official_tasks(data, split, n)
    root = games or DEFAULT_GAMES
    _check_games_root(root)
    games = [gen.plan(seed, split, i) for i in range(DEFAULT_N_TASKS[split] if n is None else n)]
    return [AlfworldTask(os.path.join(root, g.relpath()), g.task_type, g.text, (seed, split, g.i)) for g in games]


def _check_games_root(root):
    """Generated games are written under `root` on first reset: fail now if they cannot be."""
    up = os.path.abspath(root)
    while not os.path.exists(up):
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        raise ValueError(f"{up}: not a directory, so generated ALFWorld games cannot be written under {root}")
    if not os.access(up, os.W_OK | os.X_OK):
        raise ValueError(f"{up}: not writable, so generated ALFWorld games cannot be written under {root}")


def _json(path, what, key):
    """A game's JSON file, checked to be an object holding `key` (one-line ValueError naming the file otherwise)."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected {what}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e}); expected {what}") from None
    if not isinstance(obj, dict) or key not in obj:
        found = f"an object without {key!r}" if isinstance(obj, dict) else f"a JSON {type(obj).__name__}"
        raise ValueError(f"{path}: expected {what}, found {found}")
    return obj


def official_tasks(data, split, n=None):
    data = os.path.expanduser(data)
    root = os.path.join(data, "json_2.1.1", gen.SPLIT_DIRS[split])
    if os.path.exists(data) and not os.path.isdir(data):
        raise FileNotFoundError(f"ALFWorld data dir {data} is not a directory; {HINT}")
    if not os.path.isdir(data):
        raise FileNotFoundError(f"ALFWorld data dir {data} does not exist; {HINT}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ALFWorld data dir {data} has no {split} games: looked for {root}; {HINT}")
    trials = sorted(d for d, _, files in os.walk(root) if {"traj_data.json", "game.tw-pddl"} & set(files))
    tasks = []
    for d in trials:
        if n is not None and len(tasks) >= n:
            break
        if "movable" in d or "Sliced" in d:  # AlfredTWEnv skips these (not in ALFWorld's text benchmark)
            continue
        paths = [os.path.join(d, f) for f in ("traj_data.json", "game.tw-pddl")]
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"ALFWorld game {d} lacks {os.path.basename(p)} (looked for {p}); "
                                        f"the download is incomplete: {HINT}")
        game = _json(paths[1], "a TextWorld game object with 'grammar'", "grammar")
        if not game.get("solvable"):  # as AlfredTWEnv: only games alfworld-generate could solve
            continue
        task_type = _json(paths[0], "ALFRED's trajectory object with 'task_type'", "task_type")["task_type"]
        if not isinstance(game["grammar"], str):
            raise ValueError(f"{paths[1]}: expected 'grammar' to be a string, found a JSON {type(game['grammar']).__name__}")
        if task_type not in gen.TASK_TYPES:
            raise ValueError(f"{paths[0]}: expected 'task_type' to be one of ALFWorld's six, found {task_type!r}")
        m = re.search(re.escape(TASK_MARK) + r'(.*?)"', game["grammar"])  # the task text alfworld-generate filled in
        tasks.append(AlfworldTask(paths[1], task_type, m.group(1) if m else ""))
    return tasks


# -----------------------------------------------------------------------------
# The environment

class _KeepArgv:
    """fast_downward.pddl2sas overwrites sys.argv (its translator reads options from it): put it back."""

    def __enter__(self):
        self.argv = list(sys.argv)

    def __exit__(self, *exc):
        sys.argv[:] = self.argv


# TextWorld engines not in use. Each holds its own copy of Fast Downward's library (loaded per PddlEnv: the
# library's global state holds the current game), and a copy cannot be unloaded safely: dlclose, then loading a
# new copy, segfaults after a few rounds. rollout.py makes fresh envs every iteration, so envs hand their engine
# back here when closed or collected and the next Env reuses it: a process holds as many engines as it ever had
# envs alive at once (e.g. G x N), plus one, about 33 MB of mapped library each. The one: textworld's text grammar
# parser (a module-level tatsu parser) keeps its last parse's furthest failure, whose traceback holds the stack
# that called it, so the env that stepped last outlives `del` until another env parses.
_FREE = []  # (wrapped PddlEnv, game file it holds)


class Env:
    """One ALFWorld game at a time through TextWorld. reset(task) -> Observation; step(action) -> (obs, r, done, info)."""

    def __init__(self):
        self._tw, self._loaded, self._state, self.done = None, None, None, True

    def _engine(self):
        if self._tw is None:
            if _FREE:
                self._tw, self._loaded = _FREE.pop()
            else:
                textworld, PddlEnv, AlfredDemangler, AlfredInfos = _engine_modules()
                infos = textworld.EnvInfos(admissible_commands=True, won=True, facts=True, policy_commands=True,
                                           extras=["gamefile"])
                self._tw = AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False))  # textworld.start's stack
        return self._tw

    def _solve(self, data):
        """The planner's plan from the start of an in-memory game, replayed to check that it wins."""
        tw, self._loaded = self._engine(), None
        tw.load(data)
        st = tw.reset()
        plan = list(st["policy_commands"])
        for cmd in plan:
            st, _, _ = tw.step(cmd)
        return plan if st["won"] else None

    def reset(self, task):
        tw = self._engine()
        with _KeepArgv():
            if task.gen and not os.path.isfile(task.gamefile):
                gen.write(gen.plan(*task.gen), task.gamefile, self._solve)
            if self._loaded != task.gamefile:
                tw.load(task.gamefile)
                self._loaded = task.gamefile
            self._state = tw.reset()
        self.task, self.t, self.done = task, 0, False
        text = self._state["feedback"].replace(BANNER, "", 1).strip()
        return self._obs(text)

    def _obs(self, text):
        self.admissible = tuple(c for c in self._state["admissible_commands"] if c != "help")
        return Observation(text, text, self.admissible, self.task.text, self.task.task_type)

    def step(self, action):
        assert not self.done, "episode is over: reset() before stepping again"
        self.t += 1
        a = " ".join(action.lower().split()) if isinstance(action, str) else ""
        admissible = a in self.admissible
        self._state, _, _ = self._tw.step(a)  # unknown commands: the engine answers "Nothing happens."
        won = bool(self._state["won"])
        truncated = not won and self.t >= MAX_STEPS
        self.done = won or truncated
        info = {"won": won, "score": float(won), "truncated": truncated, "action_admissible": admissible, "steps": self.t}
        return self._obs(self._state["feedback"].strip()), float(won), self.done, info

    def state_key(self):
        """The game's PDDL facts (static ones included), hashable: equal iff the world states are equal."""
        return frozenset(self._state["facts"])

    def expert_action(self, observable=False):
        """Fast Downward's next command toward the goal from the true state (privileged; `observable` is ignored:
        see departure 3). "look" if there is no plan (the goal holds already)."""
        plan = self._state["policy_commands"]
        return plan[0] if plan else "look"

    def close(self):
        """Hand the engine back for the next Env (see _FREE); this env can still reset (it takes one again)."""
        if self._tw is not None:
            _FREE.append((self._tw, self._loaded))
            self._tw, self._loaded, self.done = None, None, True

    def __del__(self):
        self.close()
