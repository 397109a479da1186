r"""
webshop_data: WebShop's own product and goal files, played in the shop env (envs/shop.py).

    suite = envs.make("shop", "train", data="/path/to/WebShop/data")        # synthetic goals, 1k products
    suite = envs.make("shop", "eval_unseen", data=..., human_goals=True)    # crowd-written goals
    suite = envs.make("shop", "train", data=..., full=True)                 # all 1.18M products (slow: see 1.)
    python train.py --env shop --webshop-data /path/to/WebShop/data        # default $WEBSHOP_DATA

Pages, actions, step cap and expert are envs/shop.py's; what changes is the catalog
(WebShop's products, searched by our BM25), the goals and splits (WebShop's), and
the reward rule (goal.py's, `reward` below; what still differs is departures 3 and 6).

The files (WebShop's setup.sh downloads them into its data/ folder)
------------------------------------------------------------------
items_shuffle_1000.json (full=False; verl-agent: env.webshop.use_small) or items_shuffle.json
  (full=True): a JSON list of scraped products. Fields read, all others ignored:
    asin                  str; "nan", longer than 10 chars or repeated: skipped (as WebShop)
    name                  str, the title
    category              str, one of "beauty", "electronics", "fashion", "food", "furniture"
    query                 str, the scraping query (lowercased, stripped): r_type's query match
    product_category      str, "A › B › C": r_type's category match
    full_description      str (or null), the Description page
    small_description     list of str, or one str (or null): the Features page
    pricing               str: "$12.99", "$1,299.00" or "$10.99 - $15.99"; empty/missing: $100.0
    customization_options null or {type: null or [{"value": str, "image": ...}, ...]}
items_ins_v2_1000.json / items_ins_v2.json: a JSON object asin -> {
    "attributes": [str],              the product's attribute list (the reward's fuzzy list)
    "instruction": str or absent,     the synthetic instruction (absent: no synthetic goal)
    "instruction_attributes": [str]}  the goal's attributes (non-empty when there is an instruction)
items_human_ins.json (human_goals=True only): a JSON object asin -> [{
    "instruction": str, "instruction_attributes": [str], "instruction_options": [str], ...}, ...]

Products and goals, as web_agent_site/engine/engine.py load_products and goal.py build them
-----------------------------------------------------------------------------------------
- pricing: every "$"-led piece, non-digits dropped ("$1,299.00" -> 1299.0); a range keeps
  its first two prices, shows "$a to $b" and costs uniform(a, b) at purchase; one price
  shows "$a". Options: type lowercased; value stripped, "/" -> " | ", lowercased.
- Features = small_description; Description = full_description; no reviews, "Rating:
  N.A." (WebShop's loader has its reviews file commented out).
- synthetic goals (get_synthetic_goals), per product with an instruction, one goal per
  combination of its option values (types sorted): "<instruction> with <type>: <value>,
  and ..., and price lower than <X>.00 dollars". X = the larger of two draws from the next
  four $10 steps above the price; with fewer than two such steps, no price text and
  X = 1e6. attributes = instruction_attributes, name = the title.
- human goals (get_human_goals): per instruction with attributes, "<instruction minus
  trailing dots><price text>", options = instruction_options (bare values).
- task_type = the goal's category (WebShop's five).

Reward
------
goal.py's get_reward term by term (`reward`), on the values as engine.py stores them:
    R = r_type * (n_attr + n_opt + 1[price <= price_upper]) / (|goal attributes| + |goal options| + 1)
r_type as envs/shop.py's (nouns: departure 3); attributes and options by goal.py's own rules
(every option type fuzzy, WebShop's colour list, no text fallback for options, counted per
goal option). The fuzzy matcher is thefuzz 0.19.0's token_set_ratio (WebShop's pin) without
python-Levenshtein (WebShop's requirements do not install it), reimplemented here with its
string processing, so these cases score as in WebShop:
- underscores are word characters: "easy_clean" is one token, 50 against "easy clean";
- characters 128-255 are dropped ("naïve" -> "nave", 89 against "naive"), other non-ASCII
  letters are kept inside words (fullwidth "Ｌarge" -> "ｌarge", 80 against "large");
- synthetic goals reach get_option_reward as (type, value) pairs, so normalize_color keeps a
  pair unless its type or value *is* a colour word, and the matcher reads the pair's repr:
  "large" matches ("size", "x-large") but "x-large" misses ("size", "large"), and a value
  with escaped whitespace reads as the escape ("navy\xa0blue" -> tokens navy, xa0blue;
  "x\tlarge" -> x, tlarge) and is missed even by the target's own value;
- human goals' options are the crowd's strings as written, and normalize_color is
  case-sensitive: "Rustic" stays and misses the bought "rustic" (-> "rust"), "Dark red" ->
  "red" misses the bought "dark red" (-> "dark").
Quirks are kept: a chosen value holding a colour word is normalised to that word ("standard"
-> "tan", "rustic" -> "rust") and misses its own synthetic goal option ("style: standard").
Such goals cannot reach R = 1 (won), in WebShop either, and the expert loses them.

Splits
------
WebShop's text env shuffles the goal list once with random.seed(233) (web_agent_text_env.py,
SimServer); envs then play goal indices of that list:
    WebShop baselines (baseline_models/env.py): test 0..499, eval 500..1499, train 1500..
    GiGPO / verl-agent (agent_system/environments/env_package/webshop/envs.py):
        validation 0..499, train 500.. (synthetic or human goals: env.webshop.human_goals)
Ours (random.Random(233).shuffle is that same shuffle):
    eval_unseen   goals 0..499     the test goals of both conventions; never trained on
    eval_seen     goals 500..1499  WebShop's eval range: inside GiGPO's train pool (seen)
    train         goals 500..      GiGPO's train pool
Task i of a split is goal (start + i); n larger than the pool gives the whole pool.
"Unseen" means unseen goals, not unseen products: a product's option combinations are
scattered by the shuffle, so an eval_unseen target usually has train goals too.

Departures from WebShop
-----------------------
1. Search: envs/shop.py's BM25 (k1 0.9, b 0.4, no stemming) over the text WebShop indexes
   (title, description, first bullet, "type: values" of the options), not pyserini's
   Lucene index (Porter stemming): rankings differ somewhat. Pure Python: 1k products of
   ~2 KB text index in ~0.5 s; the full 1.18M set takes about 1000x that and many GB.
2. Random draws: WebShop draws ranged prices and price limits from Python's global RNG at
   load (unseeded, before its seed-233 shuffle); here they come from (catalog_seed, asin)
   (and the instruction's index for human goals): fixed, and equal across splits. Goal
   order and splits are WebShop's exactly.
3. r_type's nouns: spaCy's en_core_web_sm when installed (goal.py's tagger; WebShop pins
   spaCy 3.3.0, so a newer model may tag a few words differently), else `content_nouns`;
   one line says which. The fallback keeps every word of 2+ characters with a letter that
   is not a function word: adjectives, verbs, units and model codes count as nouns, and
   words split at every non-alphanumeric ("men's" -> men, s dropped; "t-shirt" -> t
   dropped, shirt). So title_score (shared nouns / the goal title's nouns) changes for
   many (goal, product) pairs, r_type only where that crosses 0, 0.1 or 0.2; the goal's
   own product keeps title_score 1 (0.2 if its title has no nouns) either way.
4. Option values have whitespace runs collapsed on the pages, in click[...] and in the
   synthetic instruction text (so `click[...]` can name them); the reward reads them back
   as stored (`reward`'s raw_values). Human goals' bare option values also get their type
   looked up on the target product, for the scripted expert only.
5. Not kept: goal weights (WebShop samples by them only when no goal index is given;
   GiGPO always gives one), images. A product without an items_ins_v2 entry gets
   ["DUMMY_ATTR"] (as WebShop) and no synthetic goal (WebShop: a KeyError).
6. A null full_description or small_description scores as empty text in the attribute
   fallback; goal.py raises there (None.lower(), " ".join([None])) when the fallback
   reaches it. Unicode classes (thefuzz's \W, repr's escapes) follow the running Python's
   Unicode database, not WebShop's Python 3.8.13: they differ only for characters assigned
   since then.
"""

import itertools
import json
import os
import random
import re
from decimal import Decimal, InvalidOperation
from difflib import SequenceMatcher
from functools import lru_cache, partial

from envs import shop
from envs.shop import Catalog, Product, ShopTask

FILES = {False: ("items_shuffle_1000.json", "items_ins_v2_1000.json"), True: ("items_shuffle.json", "items_ins_v2.json")}
HUMAN_FILE = "items_human_ins.json"
SHUFFLE_SEED = 233  # SimServer: random.seed(233); random.shuffle(self.goals)
SPLITS = {"eval_unseen": (0, 500), "eval_seen": (500, 1500), "train": (500, None)}  # goal index ranges
NO_LIMIT = 1000000.0  # goal.py's price_upper when fewer than two $10 steps lie above the price
# WebShop's colour words (web_agent_site/engine/normalize.py), in its order: the first one contained in a value wins
COLORS = ("alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze brown burgundy camel "
          "camo caramel champagne charcoal cheetah chestnut chocolate christmas coffee cognac copper coral cranberry "
          "cream crystal dark denim eggplant elephant espresso fuchsia gold granite grape graphite grass gray green grey "
          "heather indigo ivory ivy khaki lavender lemon leopard light lilac lime magenta maroon mauve merlot midnight "
          "mint mocha multicolor mushroom mustard natural navy nude olive orange peach pewter pink plum purple rainbow "
          "red rose royal rust sand sapphire seashell silver skull slate steel stone stonewash sunflower tan taupe teal "
          "tiger turquoise violet walnut wheat white wine yellow").split()
FUNCTION_WORDS = set("a an and or the of for with without in on at to by from as is are be it its this that these "
                     "those your our my you we us he she they them his her not no so if but than then too very all any "
                     "each per plus into over under up out off about only also more most".split())


class WebShopDataError(ValueError):
    """A missing or malformed WebShop data file; the one-line message names the file and what was expected."""


# -----------------------------------------------------------------------------
# goal.py's reward on WebShop data


def normalize_color(option):
    """normalize.py normalize_color, case-sensitive: a string containing one of WebShop's colour words becomes the
    first such word ("navy blue" -> "blue", "Navy" stays); on a (type, value) pair `in` tests the elements, so a
    pair becomes a colour only if its type or value *is* one."""
    return next((c for c in COLORS if c in option), option)


def content_nouns(title):
    """Stand-in for spaCy's NOUN/PROPN tags: the title's words (holding a letter, 2+ characters) that are not
    function words. Product titles are mostly nouns, so this over-counts only adjectives and verbs."""
    return [t for t in shop.tokens(title) if len(t) > 1 and re.search("[a-z]", t) and t not in FUNCTION_WORDS]


@lru_cache(maxsize=1)
def _spacy():
    try:
        import spacy
        nlp = spacy.load("en_core_web_sm", exclude=["parser", "ner", "lemmatizer"])
    except (ImportError, OSError, ValueError) as e:
        print(f"webshop_data: r_type nouns from content_nouns (spaCy's en_core_web_sm unavailable: {type(e).__name__})")
        return None
    print("webshop_data: r_type nouns from spaCy's en_core_web_sm, as WebShop's goal.py")
    return nlp


@lru_cache(maxsize=1 << 17)
def nouns(title):
    """goal.py's nouns of a title: tokens tagged NOUN or PROPN, lowercased (departure 3)."""
    nlp = _spacy()
    return content_nouns(title) if nlp is None else [t.text.lower() for t in nlp(title) if t.pos_ in ("NOUN", "PROPN")]


# thefuzz 0.19.0's token_set_ratio, the matcher goal.py calls for attributes and options. It is not envs/shop.py's
# (which keeps [a-z0-9] runs): thefuzz's full_process turns a non-string into str(x) (a (type, value) pair into
# its repr), drops characters 128-255 (utils.asciionly), turns every character that is not a Unicode letter,
# digit or underscore into a space (StringProcessor's (?ui)\W), then lowercases; the ratio is difflib's, as
# without python-Levenshtein (WebShop's requirements.txt does not install it).
_LATIN1 = dict.fromkeys(range(128, 256))
_NON_WORD = re.compile(r"(?ui)\W")


def fuzz_tokens(x):
    r"""thefuzz 0.19 utils.full_process(x, force_ascii=True).split(): "easy_clean" -> ["easy_clean"], "naïve" ->
    ["nave"], ("color", "navy\xa0blue") -> ["color", "navy", "xa0blue"]."""
    x = x if isinstance(x, str) else str(x)
    return _NON_WORD.sub(" ", x.translate(_LATIN1)).lower().split()


def _ratio(a, b):
    """thefuzz 0.19 fuzz.ratio: 100 for equal strings, 0 if one is empty, else round(100 * difflib's ratio)."""
    if a == b:
        return 100
    return 0 if not a or not b else int(round(100 * SequenceMatcher(None, a, b).ratio()))


def token_set_ratio(a, b):
    """thefuzz 0.19 fuzz.token_set_ratio: the best ratio among the sorted shared tokens and each side's shared +
    own tokens; 0 when either side has no token."""
    ta, tb = set(fuzz_tokens(a)), set(fuzz_tokens(b))
    if not ta or not tb:
        return 0
    both = " ".join(sorted(ta & tb))
    s1 = (both + " " + " ".join(sorted(ta - tb))).strip()
    s2 = (both + " " + " ".join(sorted(tb - ta))).strip()
    return max(_ratio(both, s1), _ratio(both, s2), _ratio(s1, s2))


def attribute_matches(product, goal):
    """goal.py get_attribute_reward: goal attributes that fuzzy-match (> 85) one of the product's attributes, or
    occur as written (case kept) in its lowercased title, features or description."""
    title, feats, desc = product.title.lower(), " ".join(product.features).lower(), product.description.lower()
    return sum(1 for g in goal.attributes
               if any(token_set_ratio(p, g) > 85 for p in product.attributes) or g in title or g in feats or g in desc)


def goal_options(goal):
    """goal.py's goal_options as get_reward passes them: synthetic goals' (type, value) pairs, human goals' bare
    strings as the crowd wrote them (case kept). ShopTask.goal_options holds them as read from the files; goals
    built by hand without it fall back to `options`."""
    if goal.goal_options:
        return [tuple(o) for o in goal.goal_options] if goal.pair_options else list(goal.goal_options)
    return [tuple(o) for o in goal.options] if goal.pair_options else [v for _, v in goal.options]


def option_matches(chosen, goal):
    r"""goal.py get_option_reward: the goal options that some chosen value matches (token-set ratio > 85), both
    colour-normalised, counted per goal option. A synthetic goal's option is a (type, value) pair, so the
    matcher reads its repr: "large" matches ("size", "x-large") but "x-large" misses ("size", "large"); a
    value holding an escaped character reads as that escape ("navy\xa0blue" -> tokens navy, xa0blue)."""
    got = [normalize_color(v) for v in chosen]
    return sum(any(token_set_ratio(c, w) > 85 for c in got) for w in map(normalize_color, goal_options(goal)))


def reward(product, goal, options, raw_values=None):
    """goal.py get_reward on WebShop data:
        R = r_type * (n_attr + n_opt + 1[price <= price_upper]) / (|goal attributes| + |goal options| + 1)
    r_type as envs/shop.py (with `nouns` above), n_attr and n_opt as above. `options` ({type: value}) are the
    values the pages show; raw_values ({(asin, type, shown value): value as engine.py stores it}) gives back
    those whose whitespace the loader collapsed (departure 4). Returns (R, terms)."""
    raw_values = raw_values or {}
    chosen = [raw_values.get((product.asin, k, v), v) for k, v in options.items()]
    r_type, terms = shop.type_reward(product, goal, nouns)
    n_attr = attribute_matches(product, goal)
    n_opt = option_matches(chosen, goal)
    r_price = float(product.price <= goal.price_upper)
    R = r_type * (n_attr + n_opt + r_price) / (len(goal.attributes) + len(goal_options(goal)) + 1)
    return R, {**terms, "n_attr": n_attr, "n_opt": n_opt, "r_price": r_price}


# -----------------------------------------------------------------------------
# Reading the files


def _data_dir(data):
    d = os.path.abspath(os.path.expanduser(str(data)))
    if not os.path.isdir(d):
        problem = "not a directory" if os.path.exists(d) else "no such directory"
        raise WebShopDataError(f"{d}: {problem} (expected WebShop's data/ folder holding {FILES[False][0]} "
                               f"and {FILES[False][1]}, as its setup.sh downloads them)")
    return d


def _json_type(x):
    """What a JSON value is, in JSON's words (error messages)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(x), type(x).__name__)


def _read(path, kind, what):
    if not os.path.isfile(path):
        problem = "not a file" if os.path.exists(path) else "no such file"
        raise WebShopDataError(f"{path}: {problem} (expected {what}; WebShop's setup.sh downloads it)")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise WebShopDataError(f"{path}: not valid JSON ({e}); expected {what}") from None
    except OSError as e:
        raise WebShopDataError(f"{path}: cannot be read ({e.strerror or e}); expected {what}") from None
    if not isinstance(obj, kind):
        raise WebShopDataError(f"{path}: expected {what}, found {_json_type(obj)}")
    return obj


def _get(rec, key, kind, where, null_ok=False):
    """rec[key] checked against `kind`; a one-line error naming file, record and field otherwise."""
    v = rec.get(key)
    if v is None and null_ok:
        return None
    if not isinstance(v, kind) or (kind is list and not all(isinstance(x, str) for x in v)):
        found = "nothing" if key not in rec else (f"a list holding {_json_type(next(x for x in v if not isinstance(x, str)))}"
                                                   if isinstance(v, list) else _json_type(v))
        name = {str: "a string", list: "a list of strings", dict: "an object"}[kind]
        raise WebShopDataError(f"{where}: expected {key!r} to be {name}, found {found}")
    return v


def parse_pricing(text, where):
    """engine.py: the prices in a pricing string (a range keeps two) and the tag the pages show."""
    if not text:
        return [100.0], "$100.0"
    if isinstance(text, str):
        try:
            prices = [float(Decimal(re.sub(r"[^\d.]", "", piece))) for piece in text.split("$")[1:]]
        except InvalidOperation:
            prices = []
        if prices:
            return prices[:2], f"${prices[0]}" + (f" to ${prices[1]}" if len(prices) > 1 else "")
    raise WebShopDataError(f"{where}: expected 'pricing' like '$12.99' or '$10.99 - $15.99', found {text!r}")


def parse_options(raw, where):
    """engine.py: {type (lowercased): (values, stripped, '/' -> ' | ', lowercased)}; null types dropped. Returns
    (the options as pages show them, whitespace runs collapsed (departure 4); the same as engine.py stores them)."""
    if not raw:
        return {}, {}
    if not isinstance(raw, dict):
        raise WebShopDataError(f"{where}: expected 'customization_options' to be null or an object, found {_json_type(raw)}")
    shown, stored = {}, {}
    for name, contents in raw.items():
        if contents is None:
            continue
        if not isinstance(contents, list) or not all(isinstance(c, dict) and isinstance(c.get("value"), str) for c in contents):
            raise WebShopDataError(f"{where}: expected customization option {name!r} to be a list of "
                                   '{"value": str, "image": ...}')
        stored[name.lower()] = tuple(c["value"].strip().replace("/", " | ").lower() for c in contents)
        shown[name.lower()] = tuple(" ".join(v.split()) for v in stored[name.lower()])
    return shown, stored


@lru_cache(maxsize=2)
def _load(d, full, catalog_seed):
    """(Catalog, [(product index, instruction, instruction attributes, options as stored)]) from the product and
    attribute files."""
    prod_path, attr_path = (os.path.join(d, f) for f in FILES[full])
    raw = _read(prod_path, list, "a JSON list of product records")
    attrs = _read(attr_path, dict, "a JSON object mapping asin -> {attributes, instruction, instruction_attributes}")
    products, texts, synth, seen, raw_values = [], [], [], set(), {}
    for i, rec in enumerate(raw):
        where = f"{prod_path}: product {i}"
        if not isinstance(rec, dict):
            raise WebShopDataError(f"{where}: expected a product object, found {_json_type(rec)}")
        asin = _get(rec, "asin", str, where)
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue  # skipped by load_products too
        seen.add(asin)
        where = f"{prod_path}: product {i} ({asin})"
        title = _get(rec, "name", str, where)
        bullets = rec.get("small_description")
        bullets = [bullets] if isinstance(bullets, str) else _get(rec, "small_description", list, where, null_ok=True) or []
        description = _get(rec, "full_description", str, where, null_ok=True) or ""
        options, stored = parse_options(rec.get("customization_options"), where)
        for k, values in stored.items():
            for shown, v in zip(options[k], values):
                if v != shown:
                    raw_values.setdefault((asin, k, shown), v)
        prices, tag = parse_pricing(rec.get("pricing"), where)
        price = prices[0] if len(prices) == 1 else random.Random(f"webshop-price/{catalog_seed}/{asin}").uniform(*prices)
        info = attrs.get(asin)
        if info is not None and not isinstance(info, dict):
            raise WebShopDataError(f"{attr_path}: {asin}: expected an object with 'attributes', 'instruction', "
                                   f"'instruction_attributes', found {_json_type(info)}")
        info, awhere = info or {}, f"{attr_path}: {asin}"
        attributes = _get(info, "attributes", list, awhere) if "attributes" in info else ["DUMMY_ATTR"]  # as engine.py
        if info.get("instruction") is not None:
            goal_attrs = _get(info, "instruction_attributes", list, awhere)
            if not goal_attrs:  # get_synthetic_goals asserts this
                raise WebShopDataError(f"{awhere}: expected a non-empty 'instruction_attributes' with its instruction")
            synth.append((len(products), _get(info, "instruction", str, awhere), tuple(goal_attrs), stored))
        products.append(Product(asin, title, _get(rec, "query", str, where).lower().strip(), _get(rec, "category", str, where),
                                _get(rec, "product_category", str, where), tuple(attributes), options, price,
                                tuple(bullets), description, (), tag))
        option_text = ", and ".join(f"{k}: {', '.join(v)}" for k, v in options.items())
        texts.append(" ".join([title, description, bullets[0] if bullets else "", option_text]))  # WebShop's index doc
    if not products:
        raise WebShopDataError(f"{prod_path}: no usable product (expected records with a string 'asin' of at most 10 characters)")
    return Catalog(products, texts, reward_fn=partial(reward, raw_values=raw_values)), synth


def load_catalog(data, full=False, catalog_seed=0):
    """WebShop's products as a shop Catalog scored by goal.py's reward (cached per directory)."""
    return _load(_data_dir(data), bool(full), catalog_seed)[0]


# -----------------------------------------------------------------------------
# Goals and splits


def _price_limit(price, rng):
    steps = [x for x in shop.PRICE_RANGE if x > price][:4]
    if len(steps) < 2:
        return NO_LIMIT, ""
    upper = max(rng.sample(steps, 2))
    return upper, f", and price lower than {upper:.2f} dollars"


def _typed(product, value):
    """A human goal's bare option value with its type on the target product ("" if it offers no such value)."""
    v = " ".join(value.strip().replace("/", " | ").lower().split())
    return next(((k, v) for k, vals in product.options.items() if v in vals), ("", value))


@lru_cache(maxsize=4)
def _goals(d, full, catalog_seed, human_goals):
    """Every goal, in WebShop's order after its seed-233 shuffle."""
    cat, synth = _load(d, full, catalog_seed)
    key = ("webshop", d, full, catalog_seed)
    goals = []
    if not human_goals:
        for i, instruction, goal_attrs, stored in synth:
            p = cat.products[i]
            upper, price_text = _price_limit(p.price, random.Random(f"webshop-limit/{catalog_seed}/{p.asin}"))
            names = sorted(p.options)
            for combo in itertools.product(*(stored[k] for k in names)):
                pairs = tuple(zip(names, combo))  # goal.py's goal_options.items()
                opts = tuple((k, " ".join(v.split())) for k, v in pairs)  # as the pages show them
                text = instruction + (" with " + ", and ".join(f"{k}: {v}" for k, v in opts) if opts else "") + price_text
                goals.append(ShopTask(text, p.category, p.asin, p.query, p.title, p.path, goal_attrs, opts, upper, key,
                                      pair_options=True, goal_options=pairs))
    else:
        path = os.path.join(d, HUMAN_FILE)
        human = _read(path, dict, "a JSON object mapping asin -> a list of {instruction, instruction_attributes, "
                                  "instruction_options}")
        for p in cat.products:
            records = human.get(p.asin) or []
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise WebShopDataError(f"{path}: {p.asin}: expected a list of instruction objects")
            for j, rec in enumerate(records):
                where = f"{path}: {p.asin} instruction {j}"
                goal_attrs = _get(rec, "instruction_attributes", list, where)
                if not goal_attrs:
                    continue  # skipped by get_human_goals too
                upper, price_text = _price_limit(p.price, random.Random(f"webshop-limit/{catalog_seed}/{p.asin}/{j}"))
                bare = tuple(_get(rec, "instruction_options", list, where))
                goals.append(ShopTask(_get(rec, "instruction", str, where).strip(".") + price_text, p.category, p.asin,
                                      p.query, p.title, p.path, tuple(goal_attrs), tuple(_typed(p, v) for v in bare),
                                      upper, key, goal_options=bare))
    if not goals:
        src = HUMAN_FILE + " (instructions with attributes)" if human_goals else FILES[full][1] + " ('instruction' entries)"
        raise WebShopDataError(f"{d}: no goal: {src} names none of the loaded products")
    random.Random(SHUFFLE_SEED).shuffle(goals)  # the same permutation as random.seed(233); random.shuffle(goals)
    return goals


def make_tasks(split, n, data, human_goals=False, full=False, catalog_seed=0):
    """The first n goals of `split` (goal index ranges in SPLITS), as ShopTasks."""
    d = _data_dir(data)
    goals = _goals(d, bool(full), catalog_seed, bool(human_goals))
    lo, hi = SPLITS[split]
    if len(goals) <= lo:
        raise WebShopDataError(f"{d}: split {split!r} is WebShop's goal indices {lo}..{'' if hi is None else hi - 1}, "
                               f"but only {len(goals)} goals were loaded")
    return goals[lo:hi][:n]
