"""
cafe: a barista's counter. A small env written the way a newcomer adds one: this file plus one line in
envs.REGISTRY, following envs/__init__.py's contract (tests/test_env_contract.py checks it).

What it models
--------------
An order ("make a cappuccino and serve it.") is a recipe of a few steps at stations without numbers:

    grinder            grind beans (makes ground coffee ready)
    espresso machine   pull a shot (needs ground coffee; adds espresso to the cup)
    steamer            steam milk / froth milk (adds steamed milk / milk foam)
    kettle             pour hot water
    fridge             add ice / add cold milk
    tea shelf          add green tea / add black tea
    sink               empty the cup
    counter            serve the drink (ends the episode: won iff the cup holds exactly the recipe)

Nine drinks (the skill keys) in three task types: coffee (espresso, doppio, americano, latte, cappuccino),
iced (iced_latte, iced_tea), tea (green_tea, black_tea). The order names the drink, not its recipe, so a
skill that carries the recipe helps; the types group different procedures, so skills are keyed by the drink
(task.skill_key), finer than task_type. The same stations are visited again and again (a doppio grinds twice,
an iced latte opens the fridge twice) and emptying the cup returns to an earlier state: anchors repeat.

Conventions
- observation: the last feedback, then where you are, the cup and the ground coffee: "You pull a shot into
  the cup. You are at the espresso machine. The cup holds espresso." (the anchor is the same text); the
  first one lists the stations in the task's order and ends with "Your order: <task text>".
- a bad action (anything not admissible) answers NOTHING, changes nothing and counts as a step.
- the cup holds at most 4 things; adding to a full cup is not admissible. Max 20 steps.
- reward 1.0 at a winning serve, else 0; info has no "score" (rollout reads float(won)).
- splits: train and eval_seen order with two phrasings, eval_unseen with two others ("a customer orders a
  latte."); the station listing order is drawn per task.
- expert_action: reads what the text shows (station, cup, ground coffee) and knows the recipes; it empties a
  cup holding anything off the recipe, then adds what is missing in recipe order, then serves. So the
  privileged and the observable expert are one, and it replans from any state (<= 12 steps).
"""

import random
from collections import Counter
from dataclasses import dataclass

from envs import Observation

MAX_STEPS = 20
DESCRIPTION = "a small cafe, as its barista"
DEFAULT_N_TASKS = {"train": 2000, "eval_seen": 100, "eval_unseen": 100}
NOTHING = "You can't do that here."
CUP_SIZE = 4

# station -> {action: the ingredient it adds to the cup}; grinding and serving are handled on their own
STATIONS = {"grinder": {"grind beans": None}, "espresso machine": {"pull a shot": "espresso"},
            "steamer": {"steam milk": "steamed milk", "froth milk": "milk foam"},
            "kettle": {"pour hot water": "hot water"}, "fridge": {"add ice": "ice", "add cold milk": "cold milk"},
            "tea shelf": {"add green tea": "green tea", "add black tea": "black tea"},
            "sink": {"empty the cup": None}, "counter": {"serve the drink": None}}
SOURCE = {ing: (st, act) for st, acts in STATIONS.items() for act, ing in acts.items() if ing}
SAYS = {"grind beans": "You grind a dose of beans.", "pull a shot": "You pull a shot of espresso into the cup.",
        "steam milk": "You pour steamed milk into the cup.", "froth milk": "You spoon milk foam into the cup.",
        "pour hot water": "You pour hot water into the cup.", "add ice": "You drop ice into the cup.",
        "add cold milk": "You pour cold milk into the cup.", "add green tea": "You put a green tea bag in the cup.",
        "add black tea": "You put a black tea bag in the cup.", "empty the cup": "You empty the cup into the sink.",
        "look": "You look around."}
RECIPES = {"espresso": ("coffee", ["espresso"]), "doppio": ("coffee", ["espresso", "espresso"]),
           "americano": ("coffee", ["espresso", "hot water"]), "latte": ("coffee", ["espresso", "steamed milk"]),
           "cappuccino": ("coffee", ["espresso", "steamed milk", "milk foam"]),
           "iced_latte": ("iced", ["ice", "espresso", "cold milk"]),
           "iced_tea": ("iced", ["black tea", "hot water", "ice"]),
           "green_tea": ("tea", ["green tea", "hot water"]), "black_tea": ("tea", ["black tea", "hot water"])}
PHRASES = {"seen": ("make {a} {drink} and serve it.", "one {drink}, please."),
           "unseen": ("a customer orders {a} {drink}.", "prepare {a} {drink} for the customer.")}


def _name(drink):
    return drink.replace("_", " ")


def _a(drink):
    return "an" if drink[0] in "aeiou" else "a"


@dataclass(frozen=True)
class CafeTask:
    task_type: str   # coffee / iced / tea
    skill_key: str   # the drink: skills are keyed by recipe
    text: str        # "make a latte and serve it."
    stations: tuple  # the listing order of the start text


def make_tasks(split, n, seed=0):
    """n orders of `split`; order i is drawn from (seed, split, i) alone (the drink uniformly)."""
    phrases = PHRASES["unseen" if split == "eval_unseen" else "seen"]
    tasks = []
    for i in range(n):
        rng = random.Random(f"cafe/{seed}/{split}/{i}")
        drink = rng.choice(sorted(RECIPES))
        text = rng.choice(phrases).format(a=_a(drink), drink=_name(drink))
        tasks.append(CafeTask(RECIPES[drink][0], drink, text, tuple(rng.sample(sorted(STATIONS), len(STATIONS)))))
    return tasks


class Env:
    """One order at a time. reset(task) -> Observation; step(action) -> (obs, r, done, info)."""

    def reset(self, task):
        self.task, self.recipe = task, RECIPES[task.skill_key][1]
        self.at, self.cup, self.ground, self.t, self.done = "counter", [], False, 0, False
        listing = ", ".join("the " + s for s in task.stations[:-1]) + " and the " + task.stations[-1]
        return self._obs(f"You are behind the counter of a small cafe. Its stations are {listing}.",
                         f"Your order: {task.text}")

    def _obs(self, feedback, tail=""):
        cup = ("The cup holds " + ", ".join(self.cup) + ".") if self.cup else "The cup is empty."
        text = f"{feedback} You are at the {self.at}. {cup}" + (" Ground coffee is ready." if self.ground else "")
        text += f"\n\n{tail}" if tail else ""
        return Observation(text, text, self.admissible(), self.task.text, self.task.task_type)

    def admissible(self):
        acts = [f"go to the {s}" for s in STATIONS if s != self.at] + ["look"]
        for act, ing in STATIONS[self.at].items():
            if ing:  # adds to the cup: room left, and a shot needs ground coffee
                ok = len(self.cup) < CUP_SIZE and (ing != "espresso" or self.ground)
            else:  # grind once per shot; empty and serve need something in the cup
                ok = not self.ground if act == "grind beans" else bool(self.cup)
            if ok:
                acts.append(act)
        return tuple(sorted(acts))

    def step(self, action):
        assert not self.done, "episode is over: reset() before stepping again"
        self.t += 1
        a = " ".join(action.lower().split()) if isinstance(action, str) else ""
        ok, won = a in self.admissible(), False
        if not ok:
            pass  # a bad action: the state as it was
        elif a.startswith("go to the "):
            self.at = a[len("go to the "):]
        elif a == "grind beans":
            self.ground = True
        elif a == "empty the cup":
            self.cup = []
        elif a == "serve the drink":
            won, self.done = Counter(self.cup) == Counter(self.recipe), True
        elif a != "look":
            self.cup = self.cup + [STATIONS[self.at][a]]
            self.ground = self.ground and a != "pull a shot"  # a shot uses the ground coffee
        truncated = not self.done and self.t >= MAX_STEPS
        self.done = self.done or truncated
        if not ok:  # only the answer
            obs = Observation(NOTHING, NOTHING, self.admissible(), self.task.text, self.task.task_type)
        elif a == "serve the drink":
            obs = self._obs("The customer smiles." if won else f"The customer frowns: that is no {_name(self.task.skill_key)}.")
        else:
            obs = self._obs(SAYS.get(a, f"You walk to the {self.at}."))
        return obs, float(won), self.done, {"won": won, "truncated": truncated, "action_admissible": ok, "steps": self.t}

    def state_key(self):
        return self.at, tuple(self.cup), self.ground

    def expert_action(self, observable=False):
        """The barista who knows the recipes (reads only what the text shows, so `observable` changes nothing)."""
        need = Counter(self.recipe) - Counter(self.cup)
        if Counter(self.cup) - Counter(self.recipe):  # something off the recipe: start over
            return self._at("sink", "empty the cup")
        if not need:
            return self._at("counter", "serve the drink")
        ing = next(x for x in self.recipe if need[x])  # the first missing one, in recipe order
        if ing == "espresso" and not self.ground:
            return self._at("grinder", "grind beans")
        return self._at(*SOURCE[ing])

    def _at(self, station, act):
        return act if self.at == station else f"go to the {station}"


# -----------------------------------------------------------------------------
# The embedded policy (bootstrap.py): a reference skill per drink, a wrong one, the rare drinks

def _steps(recipe):
    out, spoken = [], {"espresso": "grind beans at the grinder | pull a shot at the espresso machine"}
    for ing in recipe:
        st, act = SOURCE[ing]
        out.append(spoken.get(ing, f"{act} at the {st}"))
    return " | ".join(out + ["serve the drink at the counter"])


SKILLS = {d: dict(
    when=[f"The order asks for {_a(d)} {_name(d)}.", f"Use this when a customer wants {_a(d)} {_name(d)}."],
    strategy=[f"{_a(d).capitalize()} {_name(d)} is {' and '.join(r)} in the cup and nothing else; add them in "
              "this order" + (", grinding beans before each shot" if "espresso" in r else "") + ", then serve it.",
              f"Build the {_name(d)} station by station: {', then '.join(r)}. If anything else gets into the cup, "
              "empty it at the sink and start again before serving."],
    steps=[_steps(r)]) for d, (_, r) in RECIPES.items()}
WRONG_SKILL = {"espresso": "doppio", "doppio": "espresso", "americano": "latte", "latte": "cappuccino",
               "cappuccino": "latte", "iced_latte": "latte", "iced_tea": "black_tea", "green_tea": "black_tea",
               "black_tea": "iced_tea"}
# plain demonstrations mostly lack cappuccino and iced tea: their recipes come with the skill
BOOTSTRAP = dict(rare="cappuccino,iced_tea", rare_plain=0.2, rare_naive=0.0, wrong_frac=0.0)
