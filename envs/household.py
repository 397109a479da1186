"""
household: an ALFWorld-like text household, generated offline from a seed.

What it models
--------------
ALFWorld (Shridhar et al. 2021) as the GiGPO code plays it: a room of numbered
receptacles ("cabinet 1", "fridge 1", ...) holding numbered objects, an agent
that moves between receptacles, and one of ALFWorld's six goals:

    pick_and_place_simple            "put a apple in fridge." / "put some apple on fridge."
    look_at_obj_in_light             "look at cd under the desklamp." / "examine the cd with the desklamp."
    pick_clean_then_place_in_recep   "put a clean mug in cabinet." / "clean some mug and put it in cabinet."
    pick_heat_then_place_in_recep    "put a hot egg in countertop." / "heat some egg and put it in countertop."
    pick_cool_then_place_in_recep    "put a cool tomato in shelf." / "cool some tomato and put it in shelf."
    pick_two_obj_and_place           "put two cd in safe." / "find two cd and put them in safe."

(the templates of alfworld/gen/goal_library.py, verbatim, articles included).

Conventions followed (ALFWorld's TextWorld grammar, alfworld/data/alfred.twl2,
and its PDDL domain alfred.pddl):
- start: "You are in the middle of a room. Looking quickly around you, you see a
  cabinet 1, ..., and a toaster 1.\n\nYour task is to: put a clean apple in fridge."
- "go to R" -> "You arrive at R. On the R, you see a X 1, and a Y 2." or, for an
  openable receptacle, "The R is closed." / "The R is open. In it, you see ...".
  Lists read "a X 1" (ALFWorld writes "a" even before vowels), ", and " before the
  last item, "nothing" when empty.
- "open R" -> "You open the R. The R is open. In it, you see ...";  "close R" ->
  "You close the R."; openable receptacles (fridge, microwave, cabinet, drawer,
  safe) hide their contents until opened; take/put need them open.
- "take O from R" -> "You pick up the O from the R." (one object in hand at a time).
- "put O in/on R" -> "You move the O to the R." (only where R's type can contain O's
  type: PDDL's canContain).
- "heat O with microwave 1" / "cool O with fridge 1" / "clean O with sinkbasin 1"
  -> "You heat the O using the microwave 1." (holding O, at the appliance; no need to
  open it). Heating clears cold and cooling clears hot, as in the PDDL.
- "use desklamp 1" at the receptacle holding the lamp -> "You turn on the desklamp 1."
  Look-at tasks are won while holding the object, at the lamp, with the lamp on.
- "examine R" / "examine O", "inventory" ("You are carrying: a apple 1." / "You are
  not carrying anything."), "look" ("You are facing the R. Next to it, you see
  nothing." or the middle-of-room text).
- anything else (inadmissible, malformed, empty, ...) -> "Nothing happens.", the
  state is unchanged, and the step still counts. Max 50 steps.
- the admissible list holds every command valid in the current state, sorted, as
  TextWorld lists them (without "help").
- reward 1.0 at the winning step, else 0 (info["won"], info["score"] mirror it).

Rooms and splits
----------------
Four room kinds as in ALFWorld (GOALS_VALID): kitchens (all six goals but look),
bathrooms (pick, pick two, clean), bedrooms and living rooms (pick, pick two,
look). A floor plan = a fixed multiset of receptacles in a fixed listing order,
a deterministic function of (kind, plan id, room size) and the same for every seed
(like AI2-THOR's FloorPlanN). `room_size="small"` (default, fast CPU runs) gives
6-10 receptacles; `room_size="alfworld"` gives 15-30 like ALFWorld's rooms; an int
or a (lo, hi) pair also works. Each task's seed then places 1-2 instances of the
goal object (2-3 for pick two) and about one distractor per receptacle; goal
objects never start in a receptacle of the target type.

    train, eval_seen   floor plans 0-23 of each kind; goal pairings not in HELD_OUT
    eval_unseen        floor plans 24-29 (never in train) AND only the held-out
                       (object, target receptacle) pairings of HELD_OUT, e.g.
                       (apple, diningtable), (cd, safe), (cd, desklamp): each object
                       and each receptacle appears in train, the combination never.

Departures from the real ALFWorld
---------------------------------
1. No geometry, no AI2-THOR scenes: a room is a list of receptacles; objects are
   never on the floor; there is no "slice" and no movable receptacles (the seventh
   ALFWorld goal, pick_and_place_with_movable_recep, is not used by ALFWorld's
   benchmark either).
2. Object and receptacle vocabularies, canContain and heat/cool/clean properties
   are hand-written tables below, modelled on alfworld/gen/constants.py and the
   layouts' object lists, not copied from them.
3. Put is "put O in/on R" (the action string older ALFWorld uses);
   ALFWorld 0.4's "move O to R" and "put O in R" / "put O on R" are accepted as
   aliases but not listed as admissible. Feedback uses "You move the O to the R."
4. The observation omits ALFWorld's "-= Welcome to TextWorld, ALFRED! =-" banner
   (the GiGPO code strips it too). Only desk lamps (no floor lamps) light objects.
5. Task types are drawn uniformly (ALFWorld's train set is unbalanced), and
   eval_unseen also holds out goal pairings, not only rooms (see above).
6. "use desklamp 1" always reads "You turn on the desklamp 1.": the PDDL's
   isToggled stays true once set, so a lamp never reads as turned off.
"""

import random
import re
from dataclasses import dataclass
from functools import lru_cache

from envs import Observation

MAX_STEPS = 50
DESCRIPTION = "the ALFRED Embodied Environment"  # GiGPO's ALFWorld prompt phrase (the prompt's <env>)
DEFAULT_N_TASKS = {"train": 3553, "eval_seen": 140, "eval_unseen": 134}  # ALFWorld's split sizes
NOTHING = "Nothing happens."  # the answer to any bad action (envs/__init__.py's contract)
BOOTSTRAP_OPTIONS = ("room_size",)  # bootstrap.py's --room-size goes to make_tasks

# -----------------------------------------------------------------------------
# World tables

OPENABLE = {"fridge", "microwave", "cabinet", "drawer", "safe"}

# kind -> (receptacle types every floor plan has, {type: max count} for the fill)
ROOMS = {
    "kitchen": (("countertop", "fridge", "microwave", "sinkbasin", "cabinet", "drawer"),
                {"cabinet": 12, "drawer": 8, "countertop": 3, "stoveburner": 4, "shelf": 3,
                 "diningtable": 1, "coffeemachine": 1, "toaster": 1, "garbagecan": 1}),
    "bathroom": (("countertop", "sinkbasin", "cabinet", "toilet", "drawer", "garbagecan"),
                 {"cabinet": 8, "drawer": 8, "shelf": 4, "countertop": 2, "sinkbasin": 2,
                  "towelholder": 2, "handtowelholder": 1, "toiletpaperhanger": 1, "bathtubbasin": 1}),
    "bedroom": (("bed", "desk", "sidetable", "dresser", "drawer", "shelf"),
                {"drawer": 10, "shelf": 6, "sidetable": 3, "cabinet": 4, "garbagecan": 1,
                 "safe": 1, "armchair": 1, "laundryhamper": 1}),
    "livingroom": (("sofa", "coffeetable", "sidetable", "tvstand", "drawer", "cabinet"),
                   {"drawer": 8, "cabinet": 6, "shelf": 6, "sidetable": 3, "armchair": 2, "dresser": 1,
                    "garbagecan": 1, "diningtable": 1, "safe": 1, "ottoman": 1}),
}
LAMP_HOLDERS = ("desk", "sidetable", "dresser", "coffeetable")  # where a room's desklamp 1 stands

# kind -> "object: receptacle types that can contain it (canContain) | properties"
_OBJECTS = {
    "kitchen": """
        apple: countertop diningtable fridge garbagecan sinkbasin microwave | heat cool clean
        bread: countertop diningtable fridge cabinet microwave | heat cool
        egg: countertop diningtable fridge garbagecan sinkbasin microwave | heat cool
        lettuce: countertop diningtable fridge garbagecan sinkbasin | cool clean
        potato: countertop diningtable fridge garbagecan sinkbasin microwave | heat cool clean
        tomato: countertop diningtable fridge garbagecan sinkbasin microwave | heat cool clean
        mug: countertop diningtable cabinet shelf coffeemachine sinkbasin microwave fridge | heat cool clean
        cup: countertop diningtable cabinet shelf sinkbasin microwave fridge | heat cool clean
        bowl: countertop diningtable cabinet shelf sinkbasin microwave fridge | cool clean
        plate: countertop diningtable cabinet shelf sinkbasin fridge | cool clean
        pan: countertop stoveburner cabinet sinkbasin fridge | cool clean
        pot: countertop stoveburner cabinet sinkbasin fridge | cool clean
        knife: countertop diningtable drawer sinkbasin | clean
        butterknife: countertop diningtable drawer sinkbasin | clean
        fork: countertop diningtable drawer sinkbasin | clean
        spoon: countertop diningtable drawer sinkbasin | clean
        spatula: countertop diningtable drawer sinkbasin | clean
        ladle: countertop diningtable drawer sinkbasin | clean
        saltshaker: countertop diningtable cabinet shelf drawer |
        peppershaker: countertop diningtable cabinet shelf drawer |
        soapbottle: countertop cabinet shelf |
        dishsponge: countertop sinkbasin cabinet drawer |
        winebottle: countertop diningtable fridge cabinet shelf | cool
        kettle: stoveburner countertop cabinet |
    """,
    "bathroom": """
        soapbar: countertop sinkbasin toilet cabinet bathtubbasin shelf garbagecan | clean
        cloth: countertop sinkbasin cabinet drawer bathtubbasin shelf | clean
        candle: countertop toilet cabinet shelf drawer |
        spraybottle: countertop toilet cabinet shelf garbagecan |
        toiletpaper: toiletpaperhanger toilet countertop cabinet shelf garbagecan |
        soapbottle: countertop toilet cabinet shelf |
        tissuebox: countertop toilet shelf drawer |
        towel: towelholder countertop cabinet |
        handtowel: handtowelholder countertop cabinet |
        scrubbrush: toilet countertop cabinet garbagecan |
    """,
    "bedroom": """
        book: bed desk sidetable shelf dresser drawer armchair |
        cd: desk sidetable shelf drawer dresser safe garbagecan |
        pen: desk sidetable shelf drawer dresser |
        pencil: desk sidetable shelf drawer dresser garbagecan |
        keychain: desk sidetable dresser drawer safe shelf |
        creditcard: desk sidetable dresser drawer safe shelf armchair |
        cellphone: bed desk sidetable dresser drawer safe armchair |
        alarmclock: desk sidetable dresser shelf |
        laptop: bed desk armchair dresser |
        pillow: bed armchair |
        watch: desk sidetable dresser drawer safe shelf |
        mug: desk sidetable shelf dresser |
        bowl: desk sidetable shelf dresser |
        cloth: laundryhamper drawer dresser cabinet |
    """,
    "livingroom": """
        book: sofa armchair coffeetable sidetable shelf drawer dresser diningtable |
        keychain: sofa armchair coffeetable sidetable drawer dresser safe shelf |
        creditcard: sofa armchair coffeetable sidetable drawer dresser safe shelf diningtable |
        remotecontrol: sofa armchair coffeetable sidetable tvstand dresser |
        newspaper: sofa armchair coffeetable sidetable diningtable ottoman |
        vase: shelf sidetable coffeetable tvstand dresser diningtable cabinet |
        statue: shelf sidetable coffeetable tvstand dresser diningtable cabinet |
        watch: coffeetable sidetable drawer dresser safe shelf |
        box: sofa armchair coffeetable tvstand sidetable dresser diningtable ottoman |
        pillow: sofa armchair ottoman |
        laptop: sofa armchair coffeetable diningtable ottoman |
        cellphone: sofa armchair coffeetable sidetable drawer dresser |
        tissuebox: coffeetable sidetable shelf dresser diningtable |
        plate: coffeetable diningtable sidetable shelf cabinet |
        pen: coffeetable sidetable drawer shelf dresser diningtable |
    """,
}
OBJECTS = {kind: {line.split(":")[0].strip(): (frozenset(line.split(":")[1].split("|")[0].split()),
                                                frozenset(line.split("|")[1].split()))
                  for line in spec.strip().splitlines()}
           for kind, spec in _OBJECTS.items()}

PICK, LOOK, CLEAN, HEAT, COOL, TWO = TASK_TYPES = (
    "pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")
TASK_ROOMS = {PICK: ("kitchen", "bathroom", "bedroom", "livingroom"), TWO: ("kitchen", "bathroom", "bedroom", "livingroom"),
              LOOK: ("bedroom", "livingroom"), CLEAN: ("kitchen", "bathroom"), HEAT: ("kitchen",), COOL: ("kitchen",)}
PROCESS = {CLEAN: ("clean", "sinkbasin"), HEAT: ("heat", "microwave"), COOL: ("cool", "fridge")}  # property, appliance
TEMPLATES = {  # alfworld/gen/goal_library.py
    PICK: ("put a {obj} in {recep}.", "put some {obj} on {recep}."),
    LOOK: ("look at {obj} under the {recep}.", "examine the {obj} with the {recep}."),
    CLEAN: ("put a clean {obj} in {recep}.", "clean some {obj} and put it in {recep}."),
    HEAT: ("put a hot {obj} in {recep}.", "heat some {obj} and put it in {recep}."),
    COOL: ("put a cool {obj} in {recep}.", "cool some {obj} and put it in {recep}."),
    TWO: ("put two {obj} in {recep}.", "find two {obj} and put them in {recep}."),
}

# eval_unseen's goal pairings (object type, target receptacle type; desklamp = look-at).
# train and eval_seen never use them; eval_unseen uses only them (and unseen floor plans).
HELD_OUT = {
    ("apple", "diningtable"), ("egg", "countertop"), ("tomato", "fridge"), ("potato", "garbagecan"),
    ("mug", "shelf"), ("cup", "countertop"), ("lettuce", "diningtable"), ("pan", "countertop"),
    ("bowl", "cabinet"), ("knife", "diningtable"), ("spoon", "drawer"), ("saltshaker", "shelf"),
    ("soapbar", "cabinet"), ("cloth", "countertop"), ("candle", "toilet"), ("spraybottle", "shelf"),
    ("cd", "safe"), ("book", "bed"), ("pen", "shelf"), ("keychain", "dresser"), ("creditcard", "coffeetable"),
    ("remotecontrol", "sofa"), ("vase", "tvstand"), ("watch", "sidetable"),
    ("cd", "desklamp"), ("alarmclock", "desklamp"), ("pencil", "desklamp"), ("remotecontrol", "desklamp"),
}
N_PLANS, UNSEEN_PLANS = 30, range(24, 30)  # like ALFWorld's 24 train / 6 unseen scenes per kind
ROOM_SIZES = {"small": (6, 10), "alfworld": (15, 30)}


@dataclass(frozen=True)
class HouseholdTask:
    task_type: str    # one of TASK_TYPES
    room: str         # room kind
    plan: int         # floor plan id
    room_size: tuple  # (lo, hi) receptacles
    obj: str          # goal object type
    target: str       # target receptacle type ("desklamp" for look-at)
    text: str         # "put a clean apple in fridge."
    seed: int         # placement seed


@lru_cache(maxsize=None)
def floor_plan(kind, plan, lo, hi):
    """Receptacle names of a floor plan in listing order, plus the index of the one holding the lamp (-1)."""
    rng = random.Random(f"plan/{kind}/{plan}/{lo}/{hi}")  # independent of the task seed, like a fixed scene
    must, fill = ROOMS[kind]
    types = list(must)
    n = rng.randint(lo, hi)
    while len(types) < n:
        room = [t for t, m in fill.items() if types.count(t) < m]
        if not room:
            break
        types.append(rng.choice(room))
    count, names = {}, []
    for t in types:
        count[t] = count.get(t, 0) + 1
        names.append(f"{t} {count[t]}")
    rng.shuffle(names)
    lamp = -1
    if kind in ("bedroom", "livingroom"):
        lamp = rng.choice([i for i, nm in enumerate(names) if nm.split()[0] in LAMP_HOLDERS])
    return tuple(names), lamp


def _room_range(room_size):
    """'small' | 'alfworld' | n | (lo, hi) -> (lo, hi) receptacles per floor plan."""
    lo, hi = ROOM_SIZES[room_size] if isinstance(room_size, str) else (
        (room_size, room_size) if isinstance(room_size, int) else room_size)
    assert 6 <= lo <= hi <= 30, "rooms hold 6 (the mandatory receptacles) to 30 receptacles"
    return int(lo), int(hi)


def _goal_options(task_type, kind, present, split):
    """(object, target) pairs the task type allows in a room with these receptacle types."""
    prop, appliance = PROCESS.get(task_type, (None, None))
    opts = []
    for obj, (holders, props) in OBJECTS[kind].items():
        hs = holders & present
        if not hs or (prop and prop not in props):
            continue
        targets = ["desklamp"] if task_type == LOOK else sorted(hs - {appliance})
        for t in targets:
            if t != "desklamp" and not hs - {t}:
                continue  # the goal object must be able to start somewhere else
            if ((obj, t) in HELD_OUT) == (split == "eval_unseen"):
                opts.append((obj, t))
    return opts


def make_tasks(split, n, seed=0, room_size="small"):
    lo, hi = _room_range(room_size)
    plans = list(UNSEEN_PLANS) if split == "eval_unseen" else [p for p in range(N_PLANS) if p not in UNSEEN_PLANS]
    tasks = []
    for i in range(n):
        rng = random.Random(f"household/{seed}/{split}/{i}")
        while True:  # a few retries at most: some small plans lack some target types
            task_type = rng.choice(TASK_TYPES)
            kind = rng.choice(TASK_ROOMS[task_type])
            plan = rng.choice(plans)
            names, _ = floor_plan(kind, plan, lo, hi)
            opts = _goal_options(task_type, kind, {nm.split()[0] for nm in names}, split)
            if opts:
                break
        obj, target = rng.choice(opts)
        text = rng.choice(TEMPLATES[task_type]).format(obj=obj, recep=target)
        tasks.append(HouseholdTask(task_type, kind, plan, (lo, hi), obj, target, text, rng.getrandbits(32)))
    return tasks


def _a_list(names):
    """ALFWorld's list rendering: 'a x 1', 'a x 1, and a y 2', 'a x, a y, and a z'; 'nothing' if empty."""
    if not names:
        return "nothing"
    items = ["a " + nm for nm in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


_PUT_ALIAS = re.compile(r"^(?:move (.+) to|put (.+?) (?:in|on|into|onto)) (.+)$")

# command opcodes
GO, OPEN, CLOSE, TAKE, PUT, PROC, USE, EXR, EXO, INV, LOOKC = range(11)

# -----------------------------------------------------------------------------
# The environment


class Env:
    """One household episode at a time. reset(task) -> Observation; step(action) -> (obs, r, done, info)."""

    def reset(self, task):
        rng = random.Random(task.seed)
        names, lamp_r = floor_plan(task.room, task.plan, *task.room_size)
        self.task, self.task_type, self.goal, self.target = task, task.task_type, task.obj, task.target
        self.rnames = list(names)
        self.rtypes = [nm.split()[0] for nm in names]
        self.openable = [t in OPENABLE for t in self.rtypes]
        self.opened = [False] * len(names)
        self.contents = [[] for _ in names]
        self.goto = ["go to " + nm for nm in names]
        present = set(self.rtypes)
        by_type = {}
        for i, t in enumerate(self.rtypes):
            by_type.setdefault(t, []).append(i)

        # objects: goal instances (never in a target-type receptacle) + ~one distractor per receptacle
        table = OBJECTS[task.room]
        n_goal = 2 + rng.randrange(2) if task.task_type == TWO else 1 + rng.randrange(2)
        kinds = [task.obj] * n_goal
        others = sorted(o for o, (h, _) in table.items() if o != task.obj and h & present)
        kinds += [rng.choice(others) for _ in range(round(len(names) * rng.uniform(0.8, 1.3)))]
        rng.shuffle(kinds)
        self.onames, self.otypes, self.ocan, self.oprops = [], [], [], []
        count = {}
        for k in kinds:
            holders, props = table[k]
            spots = sorted(holders & present - ({task.target} if k == task.obj else set()))
            r = rng.choice(by_type[rng.choice(spots)])
            count[k] = count.get(k, 0) + 1
            self.contents[r].append(len(self.onames))
            self.onames.append(f"{k} {count[k]}")
            self.otypes.append(k)
            self.ocan.append(holders)
            self.oprops.append(props)
        self.lamp = -1
        if lamp_r >= 0:  # the desk lamp: an object that stands on its receptacle and cannot be taken
            self.lamp = len(self.onames)
            self.contents[lamp_r].insert(rng.randrange(len(self.contents[lamp_r]) + 1), self.lamp)
            self.onames.append("desklamp 1")
            self.otypes.append("desklamp")
            self.ocan.append(frozenset())
            self.oprops.append(frozenset())
        n = len(self.onames)
        self.flags = {"hot": [False] * n, "cool": [False] * n, "clean": [False] * n}
        self.lamp_on = False
        self.loc, self.held = -1, -1
        self.t, self.done = 0, False
        self.seen = set()  # receptacles whose contents the agent has seen (for the observable expert)
        self.goal_recs = [i for i, t in enumerate(self.rtypes) if t == task.target]
        self.middle = "You are in the middle of a room. Looking quickly around you, you see " + _a_list(names) + "."
        self._refresh()
        return self._obs(self.middle + "\n\nYour task is to: " + task.text)

    # -- text ---------------------------------------------------------------

    def _describe(self, r):
        rn = self.rnames[r]
        if self.openable[r]:
            if not self.opened[r]:
                return f"The {rn} is closed."
            return f"The {rn} is open. In it, you see {_a_list([self.onames[o] for o in self.contents[r]])}."
        return f"On the {rn}, you see {_a_list([self.onames[o] for o in self.contents[r]])}."

    def _examine_obj(self, o):
        if o == self.lamp:
            return f"This {self.onames[o]} is {'on' if self.lamp_on else 'off'}."
        hot, cool, clean = self.flags["hot"][o], self.flags["cool"][o], self.flags["clean"][o]
        on = self.onames[o]
        if clean and (hot or cool):
            return f"This is a {'hot' if hot else 'cool'} and clean {on}."
        if hot or clean:
            return f"This is a {'hot' if hot else 'clean'} {on}."
        if cool:
            return f"This is a cold {on}."
        return f"There's nothing special about {on}."

    def _obs(self, text):
        return Observation(text, text, self.admissible, self.task.text, self.task_type)

    # -- admissible commands ------------------------------------------------

    def _refresh(self):
        """Rebuild {command: (opcode, args)} for the current state: the single source of validity."""
        loc, held, on, rn = self.loc, self.held, self.onames, self.rnames
        cmds = {g: (GO, i) for i, g in enumerate(self.goto) if i != loc}
        cmds["inventory"] = (INV,)
        cmds["look"] = (LOOKC,)
        if held >= 0:
            cmds["examine " + on[held]] = (EXO, held)
        if loc >= 0:
            r, name, rt = loc, rn[loc], self.rtypes[loc]
            cmds["examine " + name] = (EXR, r)
            visible = True
            if self.openable[r]:
                visible = self.opened[r]
                cmds[("close " if visible else "open ") + name] = (CLOSE if visible else OPEN, r)
            if visible:
                for o in self.contents[r]:
                    cmds["examine " + on[o]] = (EXO, o)
                    if held < 0 and o != self.lamp:
                        cmds[f"take {on[o]} from {name}"] = (TAKE, o)
            if self.lamp >= 0 and self.lamp in self.contents[r]:
                cmds["use " + on[self.lamp]] = (USE,)
            if held >= 0:
                if visible and rt in self.ocan[held]:
                    cmds[f"put {on[held]} in/on {name}"] = (PUT, held)
                for prop, verb, app in (("hot", "heat", "microwave"), ("cool", "cool", "fridge"), ("clean", "clean", "sinkbasin")):
                    if rt == app and verb in self.oprops[held]:
                        cmds[f"{verb} {on[held]} with {name}"] = (PROC, prop, verb)
        self.cmds = cmds
        self.admissible = tuple(sorted(cmds))

    # -- dynamics -----------------------------------------------------------

    def _apply(self, cmd):
        op, loc = cmd[0], self.loc
        if op == GO:
            self.loc = cmd[1]
            if not self.openable[cmd[1]] or self.opened[cmd[1]]:
                self.seen.add(cmd[1])
            return f"You arrive at {self.rnames[cmd[1]]}. {self._describe(cmd[1])}"
        if op == OPEN:
            self.opened[loc] = True
            self.seen.add(loc)
            return f"You open the {self.rnames[loc]}. {self._describe(loc)}"
        if op == CLOSE:
            self.opened[loc] = False
            return f"You close the {self.rnames[loc]}."
        if op == TAKE:
            self.contents[loc].remove(cmd[1])
            self.held = cmd[1]
            return f"You pick up the {self.onames[cmd[1]]} from the {self.rnames[loc]}."
        if op == PUT:
            self.contents[loc].append(cmd[1])
            self.held = -1
            return f"You move the {self.onames[cmd[1]]} to the {self.rnames[loc]}."
        if op == PROC:
            prop, verb = cmd[1], cmd[2]
            self.flags[prop][self.held] = True
            if prop != "clean":  # heating clears cold, cooling clears hot (PDDL HeatObject/CoolObject)
                self.flags["cool" if prop == "hot" else "hot"][self.held] = False
            return f"You {verb} the {self.onames[self.held]} using the {self.rnames[loc]}."
        if op == USE:
            self.lamp_on = True
            return f"You turn on the {self.onames[self.lamp]}."
        if op == EXR:
            return self._describe(loc)
        if op == EXO:
            return self._examine_obj(cmd[1])
        if op == INV:
            return f"You are carrying: a {self.onames[self.held]}." if self.held >= 0 else "You are not carrying anything."
        # LOOKC
        return self.middle if loc < 0 else f"You are facing the {self.rnames[loc]}. Next to it, you see nothing."

    def _won(self):
        g = self.goal
        if self.task_type == LOOK:
            return (self.held >= 0 and self.otypes[self.held] == g and self.lamp_on
                    and self.loc >= 0 and self.lamp in self.contents[self.loc])
        flag = self.flags[{CLEAN: "clean", HEAT: "hot", COOL: "cool"}[self.task_type]] if self.task_type in PROCESS else None
        need = 2 if self.task_type == TWO else 1
        for r in self.goal_recs:  # ALFWorld's goal: `need` distinct goal objects in one target receptacle
            if sum(1 for o in self.contents[r] if self.otypes[o] == g and (flag is None or flag[o])) >= need:
                return True
        return False

    def step(self, action):
        assert not self.done, "episode is over: reset() before stepping again"
        self.t += 1
        a = " ".join(action.lower().split()) if isinstance(action, str) else ""
        cmd = self.cmds.get(a)
        if cmd is None and (m := _PUT_ALIAS.match(a)):
            cmd = self.cmds.get(f"put {m.group(1) or m.group(2)} in/on {m.group(3)}")
        if cmd is None:
            text, won = NOTHING, False
        else:
            text = self._apply(cmd)
            self._refresh()
            won = self._won()
        truncated = not won and self.t >= MAX_STEPS
        self.done = won or truncated
        info = {"won": won, "score": float(won), "truncated": truncated, "action_admissible": cmd is not None, "steps": self.t}
        return self._obs(text), float(won), self.done, info

    def state_key(self):
        """Exact world state (no step counter, no last feedback), hashable."""
        return (self.loc, self.held, tuple(map(tuple, self.contents)), tuple(self.opened), self.lamp_on,
                tuple(self.flags["hot"]), tuple(self.flags["cool"]), tuple(self.flags["clean"]))

    # -- demonstrators of the embedded policy (bootstrap.py) -----------------

    def naive_action(self):
        """What a demonstrator that does not know the task type's procedure plays: the observable expert of the
        simple pick-and-place task (takes the object to the target, skipping heat / cool / clean / the lamp)."""
        true_type, self.task_type = self.task_type, NAIVE_TYPE
        try:
            return self.expert_action(observable=True)
        finally:
            self.task_type = true_type

    def naive_done(self, action):
        """The naive demonstrator believes the task done once it has put the goal object somewhere."""
        return action.startswith(f"put {self.goal} ")

    def variant_opening(self):
        """The opening moves of the target-first variant (skill_variant), from the true state: to the desklamp
        and turn it on (look-at), else to the target receptacle and open it."""
        if self.task_type == LOOK:
            r = next(r for r, c in enumerate(self.contents) if self.lamp in c)
            return [self.goto[r], "use " + self.onames[self.lamp]]
        r = self.goal_recs[0]
        return [self.goto[r]] + (["open " + self.rnames[r]] if self.openable[r] else [])

    # -- scripted expert (privileged: reads the true state) -----------------

    def expert_action(self, observable=False):
        """Next action of a planner that solves the task from any reachable state (<= ~16 steps).

        observable=True: it knows only what the agent has seen (receptacles visited, and opened if
        openable) and searches the others in the order of the admissible list, as a human demonstrator
        reading that list would; its trajectories are longer and imitable by a policy that sees only
        the text (the prompt's last actions and admissible list determine the next search)."""
        self._observable = observable
        g, held, on, loc = self.goal, self.held, self.onames, self.loc
        if self.task_type == LOOK:
            if held >= 0 and self.otypes[held] == g:
                lamp_r = next(r for r, c in enumerate(self.contents) if self.lamp in c)
                return self.goto[lamp_r] if loc != lamp_r else "use " + on[self.lamp]
            return self._drop() if held >= 0 else self._fetch(lambda o: self.otypes[o] == g)
        # destination: for pick two the target receptacle already holding most goal objects
        dests = self.goal_recs
        if self.task_type == TWO:
            best = max(sum(self.otypes[o] == g for o in self.contents[r]) for r in dests)
            dests = [r for r in dests if sum(self.otypes[o] == g for o in self.contents[r]) == best]
        dest = loc if loc in dests else dests[0]
        if held >= 0 and self.otypes[held] == g:
            if self.task_type in PROCESS:
                prop, app = PROCESS[self.task_type]
                flag = {"clean": "clean", "heat": "hot", "cool": "cool"}[prop]
                if not self.flags[flag][held]:
                    r = loc if loc >= 0 and self.rtypes[loc] == app else self.rtypes.index(app)
                    return self.goto[r] if r != loc else f"{prop} {on[held]} with {self.rnames[r]}"
            if loc != dest:
                return self.goto[dest]
            if self.openable[dest] and not self.opened[dest]:
                return "open " + self.rnames[dest]
            return f"put {on[held]} in/on {self.rnames[dest]}"
        if held >= 0:
            return self._drop()
        return self._fetch(lambda o: self.otypes[o] == g and o not in self.contents[dest])

    def _fetch(self, want):
        where = {o: r for r, c in enumerate(self.contents) for o in c
                 if not self._observable or r in self.seen or (r == self.loc and not self.openable[r])}
        if not any(want(o) for o in where):  # search: the next unseen receptacle that could hold it
            holders = self.ocan[next(o for o in range(len(self.onames)) if want(o))]
            # in the order of the admissible list (sorted names), so the choice can be read off the prompt:
            # the next candidate after the last receptacle searched
            r = min((r for r in range(len(self.rnames)) if r not in self.seen and self.rtypes[r] in holders),
                    key=lambda r: self.goto[r])
            return self.goto[r] if r != self.loc else "open " + self.rnames[r]
        o = min((o for o in where if want(o)), key=lambda o: (where[o] != self.loc, o))
        r = where[o]
        if r != self.loc:
            return self.goto[r]
        if self.openable[r] and not self.opened[r]:
            return "open " + self.rnames[r]
        return f"take {self.onames[o]} from {self.rnames[r]}"

    def _drop(self):
        """Put a held non-goal object down somewhere it fits (here if possible)."""
        h, loc = self.held, self.loc
        if loc >= 0 and self.rtypes[loc] in self.ocan[h]:
            if self.openable[loc] and not self.opened[loc]:
                return "open " + self.rnames[loc]
            return f"put {self.onames[h]} in/on {self.rnames[loc]}"
        fits = [r for r, t in enumerate(self.rtypes) if t in self.ocan[h]]
        return self.goto[min(fits, key=lambda r: (self.openable[r], r))]


# -----------------------------------------------------------------------------
# The embedded policy (bootstrap.py; envs/__init__.py's contract)

# Reference skills (a skill's three fields) per task type: what a good miner writes. Each field has phrasings to
# draw from, so that reading a skill is learned as language, not as one fixed string.
SEARCH = "search for the object"
SKILLS = {
    PICK: dict(
        when=["The task asks you to put an object in or on a receptacle.",
              "Use this when one object has to be moved into or onto a receptacle."],
        strategy=["Search the places that can hold the object, take it, then carry it to the target receptacle.",
                  "Look for the object one receptacle at a time; once you hold it, go to the target and put it there."],
        steps=[f"{SEARCH} | take it | go to the target | put it in/on the target"]),
    LOOK: dict(
        when=["The task asks you to look at or examine an object under the desklamp.",
              "Use this when an object must be examined in the light of the desklamp."],
        strategy=["Find and take the object, then go to the receptacle where the desklamp stands and turn it on.",
                  "Hold the object first; the task is done when you use the desklamp while holding it."],
        steps=[f"{SEARCH} | take it | go to the desklamp | use the desklamp"]),
    TWO: dict(
        when=["The task asks you to put two objects of the same kind in a receptacle.",
              "Use this when two objects of one kind must end up in the same receptacle."],
        strategy=["Move them one at a time: put the first in the target, then search for the second.",
                  "You can carry one object only, so bring the first to the target before fetching the second."],
        steps=["find and take the first object | put it in/on the target | find and take the second object | "
               "go to the target | put it in/on the target"])}
for _ttype, (_verb, _adj, _app) in ((CLEAN, ("clean", "cleaned", "sinkbasin")), (HEAT, ("heat", "hot", "microwave")),
                                    (COOL, ("cool", "cool", "fridge"))):
    SKILLS[_ttype] = dict(
        when=[f"The task asks for a {_adj} object to be put in a receptacle.",
              f"Use this when an object must be {_adj if _verb != 'heat' else 'heated'} before it is placed."],
        strategy=[f"Find and take the object, {_verb} it with the {_app}, then bring it to the target.",
                  f"The {_app} does the work: carry the object there and {_verb} it, then place it."],
        steps=[f"{SEARCH} | take the object | go to {_app} | {_verb} the object with {_app} | "
               "go to the target and put the object in/on it"])
WRONG_SKILL = {HEAT: COOL, COOL: HEAT, CLEAN: HEAT, PICK: LOOK, LOOK: PICK, TWO: PICK}  # another type's skill
TYPE_NAMES = {"heat": HEAT, "cool": COOL, "clean": CLEAN, "look": LOOK, "pick": PICK, "two": TWO}  # for --rare
# the plain demonstrations mostly lack heat and cool (rare): the plain policy lacks what their skills supply
BOOTSTRAP = dict(rare="heat,cool")
NAIVE_TYPE = PICK  # the procedure the naive demonstrator plays for every type (Env.naive_action)

# The target-first variant of a skill (half of the skill demonstrations): a procedure that visits the target (or
# the desklamp) before searching, which the expert then follows (Env.variant_opening), so the block must be read.
TARGET_FIRST = {LOOK: ("Turn on the desklamp first.", "go to the desklamp and use it first"),
                None: ("Open the target first.", "go to the target first and open it")}


def skill_variant(skill, task_type):
    """The target-first variant of a reference skill dict of this task type."""
    strategy, step = TARGET_FIRST.get(task_type, TARGET_FIRST[None])
    steps = skill["steps"].split(" | ")
    return dict(skill, strategy=strategy + " " + skill["strategy"],
                steps=" | ".join([step] + steps[:2] + [" and ".join(steps[2:])]))
