"""
shop: a WebShop-like shopping site over a procedurally generated catalog, offline.

What it models
--------------
WebShop (Yao et al. 2022) in its text mode as the GiGPO code plays it: a search
page, paged search results (10 per page, at most 50 results), item pages with
option buttons and Description / Features / Reviews sub-pages, and Buy Now, which
ends the episode with WebShop's [0,1] purchase reward. Goals are WebShop's
synthetic goals: an instruction written from a target product, a subset of its
attributes, one value per option type, and a price limit.

Conventions followed (web_agent_site/ of the WebShop repo):
- actions `search[query]` (search page only) and `click[button]`, buttons lowercase:
  `click[back to search]`, `click[next >]`, `click[< prev]`, `click[b0xxxxxxxx]`,
  option values (`click[black]`), `click[description]`, `click[features]`,
  `click[reviews]`, `click[buy now]`. Anything else leaves the page (and the
  state) unchanged and still counts as a step. Max 15 steps.
- page text in WebShop's simple text mode, visible strings joined by " [SEP] ":
    search   "WebShop [SEP] Instruction: [SEP] <instr> [SEP] Search"
    results  "Instruction: [SEP] <instr> [SEP] Back to Search [SEP] Page 1 (Total results: 50)
              [SEP] Next > [SEP] B0XXXXXXXX [SEP] <title> [SEP] $12.99 [SEP] ..."
    item     "... [SEP] Back to Search [SEP] < Prev [SEP] color [SEP] black [SEP] white [SEP]
              <title> [SEP] Price: $12.99 [SEP] Rating: N.A. [SEP] Description [SEP] Features
              [SEP] Reviews [SEP] Buy Now"
  and, as in that mode, the page does not show which options are selected.
- "< prev" goes to the previous results page, from an item page back to its
  results, from a sub-page back to the item; entering an item or a new search
  clears the selected options; an option click overwrites that option type.
- admissible actions as the GiGPO WebShop wrapper lists them: `search[<your query>]`
  (a placeholder the agent fills in) on the search page, `click[x]` for every
  clickable x elsewhere.
- search ranking: BM25 (k1=0.9, b=0.4, pyserini's defaults) over each product's
  title and feature bullets, implemented here; top 50 results.
- reward (web_agent_site/engine/goal.py, get_reward), with G = the goal:
      R = r_type * (n_attr + n_opt + 1[price <= G.price_upper]) / (|G.attributes| + |G.options| + 1)
  n_attr: goal attributes that token-set-ratio-match (> 85) one of the product's
    attributes or occur (substring) in its title, features or description.
  n_opt: chosen options that match a goal option: exact for "size", token-set
    ratio > 85 otherwise, both after colour normalisation (a value containing a
    basic colour word becomes that word); a chosen value occurring in the product's
    title/features/description also counts (departure 7: not goal.py's rule).
  r_type: 1.0 if the product's catalog query equals the goal's, or the category
    paths share >= 2 levels, or > 20% of the goal name's nouns occur in the bought
    product's name; else 0.5; but 0.1 if that noun overlap is < 10% and 0.0 if it
    is 0 (the overlap rules win over the matches, as in goal.py).
  success (info["won"]) means R == 1; info["score"] = R. The env returns R as the
  reward at buy now and 0 elsewhere.

Catalog and splits
------------------
5 categories x 6 product types x `products_per_type` (default 40) products, built
from `catalog_seed` (default 0, shared by all splits, like WebShop's one catalog).
Each product: ASIN, category path ("beauty & personal care › fragrance › men's
cologne"), catalog query, title (brand + type + 0-2 attributes), 3-5 attributes
from its category's pool, 1-2 option types with 2-5 values each, a price,
features (one bullet per attribute not in the title), description and reviews.
Goal i of a split is drawn from (seed, split, i): a target product, 1-3 of its
attributes, one value per option type, and a price limit drawn like WebShop's
(the larger of two of the next four $10 steps above the price), so the target
always earns R = 1.
    train, eval_seen   goals on 25 product types (eval_seen: other draws)
    eval_unseen        goals only on the 5 held-out types (UNSEEN_TYPES, the last
                       type of each category), never a goal in train; those
                       products are still in the catalog and searchable.
task_type = the goal's category ("beauty", "clothing", "electronics", "grocery", "home").

Departures from the real WebShop
--------------------------------
1. Catalog: ~1.2k generated products instead of 1.18M scraped ones; titles,
   features and descriptions are short templates; prices are single values.
2. Instructions come from templates ("i need a long lasting men's cologne with
   size: 3.4 fl oz, and price lower than 50.00 dollars"), not from crowd workers.
3. spaCy's noun tagging in r_type is replaced by a lexicon of the catalog's nouns
   (brands, product-type head nouns, a few common nouns); thefuzz's token_set_ratio
   is reimplemented with difflib.SequenceMatcher (same definition: lowercase,
   non-alphanumerics to spaces, max ratio over intersection/remainder strings).
4. "query_match" compares catalog queries (as goal.py does: product['query'] vs
   goal['query'], the scraping query), not the agent's typed search.
5. n_opt is capped at the number of goal options (goal.py can exceed it when the
   bought product has more option types than the goal, giving R > 1).
6. The done page is shortened to "Thank you for shopping with us! [SEP] Your score
   (min 0.0, max 1.0) [SEP] <R>"; no images, no "Attributes" sub-page, "Rating: N.A.".
7. Options: goal.py matches every option fuzzily and has no text fallback for them;
   here size is exact (else "large" would pass for "x-large") and the fallback
   counts. WebShop's own data is scored with goal.py's rule (envs/webshop_data.py).

WebShop's own data
------------------
`make("shop", split, data="/path/to/WebShop/data")` plays WebShop's product and
goal files instead, with WebShop's splits and goal.py's reward: envs/webshop_data.py.
"""

import math
import random
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

from envs import Observation

MAX_STEPS = 15
NOTHING = None  # a bad action shows the same page again (envs/__init__.py's contract)
FLAGS = {"data": "webshop_data"}  # train.py's --webshop-data: WebShop's own data dir ('' = the generated catalog)
DESCRIPTION = "the WebShop online shopping environment"  # the prompt's <env>
DEFAULT_N_TASKS = {"train": 6000, "eval_seen": 500, "eval_unseen": 500}
PER_PAGE, TOP_K = 10, 50
PRICE_RANGE = [10.0 * i for i in range(1, 100)]  # goal.py

# -----------------------------------------------------------------------------
# Catalog tables: category -> root path, brands, attribute pool, product types
# (query, subcategory, title words, head nouns, {option type: values}, price range).
# Option values and attributes never occur in product texts (checked in build).

COLORS = ["black", "white", "navy blue", "gray", "red", "green", "pink", "beige", "brown", "purple"]
SIZES = ["small", "medium", "large", "x-large", "xx-large"]
FLOZ = ["1.7 fl oz", "3.4 fl oz", "6.7 fl oz", "8 fl oz", "16 fl oz"]
SCENTS = ["lavender", "vanilla", "citrus", "sandalwood", "ocean breeze", "unscented"]
FLAVORS = ["chocolate", "vanilla", "peanut butter", "strawberry", "salted caramel", "mixed berry", "lemon", "cinnamon"]
PACKS = ["pack of 6", "pack of 12", "pack of 24"]

CATEGORIES = {
    "beauty": ("beauty & personal care", ["Aurelia", "Bellamora", "Cleanova", "Dermalux", "Evanesce", "Floravie", "Glowella", "Hydrelle"],
               ["long lasting", "paraben free", "cruelty free", "sulfate free", "natural ingredients", "travel size",
                "sensitive skin", "dry skin", "easy apply", "vegan"], [
        ("men's cologne", "fragrance", "Men's Cologne Eau de Toilette Spray", "men cologne toilette spray", {"size": FLOZ, "scent": SCENTS}, (20, 90)),
        ("shampoo", "hair care", "Daily Shampoo", "shampoo", {"size": FLOZ, "scent": SCENTS}, (6, 30)),
        ("lipstick", "makeup", "Matte Liquid Lipstick", "lipstick", {"color": ["ruby", "nude", "coral", "mauve", "pink", "plum"]}, (5, 25)),
        ("face moisturizer", "skin care", "Face Moisturizer Cream", "face moisturizer cream", {"size": FLOZ}, (8, 45)),
        ("body lotion", "skin care", "Body Lotion", "body lotion", {"size": FLOZ, "scent": SCENTS}, (5, 25)),
        ("hair extensions", "hair care", "Clip in Hair Extensions", "hair extensions",
         {"color": ["jet black", "dark brown", "honey blonde", "burgundy", "platinum"], "size": ["14 inch", "18 inch", "22 inch"]}, (15, 80)),
    ]),
    "clothing": ("clothing, shoes & jewelry", ["Arcwear", "Brightfield", "Cotterell", "Driftline", "Everton", "Fairway", "Granite", "Hollis"],
                 ["machine wash", "long sleeve", "short sleeve", "slim fit", "relaxed fit", "quick drying", "moisture wicking",
                  "cotton", "elastic waistband", "button closure", "rubber sole", "breathable"], [
        ("men's t-shirt", "men", "Men's Crew Neck T-Shirt", "men neck t shirt", {"color": COLORS, "size": SIZES}, (8, 30)),
        ("women's leggings", "women", "Women's High Waist Leggings", "women waist leggings", {"color": COLORS, "size": SIZES}, (10, 35)),
        ("men's sneakers", "shoes", "Men's Running Sneakers", "men sneakers", {"color": COLORS, "size": ["8", "9", "10", "11", "12"]}, (30, 95)),
        ("women's dress", "women", "Women's Summer Midi Dress", "women summer dress", {"color": COLORS, "size": SIZES}, (15, 60)),
        ("pullover hoodie", "men", "Pullover Hoodie Sweatshirt", "hoodie sweatshirt", {"color": COLORS, "size": SIZES}, (18, 55)),
        ("athletic socks", "accessories", "Athletic Crew Socks", "crew socks", {"color": COLORS, "size": PACKS}, (6, 25)),
    ]),
    "electronics": ("electronics", ["Ampire", "Boltech", "Circuitry", "Decibel", "Electra", "Fluxon", "Gigatron", "Hexwave"],
                    ["fast charging", "noise cancelling", "high speed", "water resistant", "easy use", "long battery life",
                     "compact", "durable", "hands free", "heavy duty", "plug play"], [
        ("wireless headphones", "audio", "Wireless Over Ear Headphones", "ear headphones", {"color": COLORS}, (20, 95)),
        ("wireless speaker", "audio", "Portable Wireless Speaker", "speaker", {"color": COLORS}, (15, 80)),
        ("usb c cable", "cables", "USB C Charging Cable", "usb cable", {"color": COLORS, "size": ["3 ft", "6 ft", "10 ft"]}, (5, 20)),
        ("wall charger", "accessories", "USB Wall Charger Block", "usb wall charger block", {"size": ["1 pack", "2 pack", "3 pack"]}, (8, 30)),
        ("phone case", "accessories", "Shockproof Phone Case", "phone case", {"color": COLORS, "style": ["iphone", "galaxy", "pixel", "moto"]}, (6, 25)),
        ("hdmi cable", "cables", "Braided HDMI Cable", "hdmi cable", {"size": ["3 ft", "6 ft", "10 ft", "15 ft"]}, (6, 25)),
    ]),
    "grocery": ("grocery & gourmet food", ["Amberfield", "Brookside", "Cedarvale", "Dewdrop", "Elmwood", "Fernhill", "Goldcrest", "Harvestly"],
                ["gluten free", "low sugar", "non gmo", "keto friendly", "sugar free", "high protein", "organic", "low calorie",
                 "kosher", "individually wrapped", "low carb", "dairy free"], [
        ("protein bars", "snacks", "Protein Bars", "protein bars", {"flavor name": FLAVORS, "size": PACKS}, (10, 45)),
        ("ground coffee", "beverages", "Medium Roast Ground Coffee", "roast coffee",
         {"flavor name": ["french roast", "hazelnut", "mocha", "colombian", "breakfast blend"], "size": ["12 ounce", "24 ounce", "32 ounce"]}, (8, 35)),
        ("green tea", "beverages", "Green Tea Bags", "tea bags", {"flavor name": ["jasmine", "mint", "ginger", "honey lemon", "matcha"], "size": ["20 count", "40 count", "100 count"]}, (4, 20)),
        ("potato chips", "snacks", "Kettle Cooked Potato Chips", "potato chips", {"flavor name": ["sea salt", "barbecue", "sour cream onion", "jalapeno", "salt vinegar"], "size": PACKS}, (5, 25)),
        ("beef jerky", "snacks", "Beef Jerky", "beef jerky", {"flavor name": ["original", "teriyaki", "peppered", "sweet chipotle"], "size": ["2.5 ounce", "8 ounce", "16 ounce"]}, (6, 40)),
        ("almond butter", "pantry", "Creamy Almond Butter", "almond butter", {"size": ["12 ounce", "16 ounce", "32 ounce"]}, (6, 30)),
    ]),
    "home": ("home & kitchen", ["Abode", "Birchwood", "Cozyhaus", "Dwellin", "Elmhurst", "Fernway", "Galloway", "Homestead"],
             ["machine washable", "easy clean", "living room", "bedroom", "non slip", "eco friendly", "easy assemble",
              "space saving", "heavy duty", "soft", "fade resistant", "thermal insulated"], [
        ("throw pillow covers", "decor", "Throw Pillow Covers", "pillow covers", {"color": COLORS, "size": ["16x16 inch", "18x18 inch", "20x20 inch"]}, (8, 30)),
        ("room darkening curtains", "window treatments", "Room Darkening Curtains", "room curtains", {"color": COLORS, "size": ["42x63 inch", "52x84 inch", "52x95 inch"]}, (15, 60)),
        ("area rug", "rugs", "Area Rug", "area rug", {"color": COLORS, "size": ["3x5 ft", "5x7 ft", "8x10 ft"]}, (25, 99)),
        ("bath towel set", "bath", "Cotton Bath Towel Set", "bath towel set", {"color": COLORS}, (15, 50)),
        ("storage bins", "storage", "Fabric Storage Bins", "storage bins", {"color": COLORS, "size": ["2 pack", "4 pack", "6 pack"]}, (10, 40)),
        ("bed sheet set", "bedding", "Microfiber Bed Sheet Set", "bed sheet set", {"color": COLORS, "size": ["twin", "full", "queen", "california king"]}, (15, 60)),
    ]),
}
UNSEEN_TYPES = {types[-1][0] for _, _, _, types in CATEGORIES.values()}  # eval_unseen goal types
NOUNS = ({b.lower() for _, brands, _, _ in CATEGORIES.values() for b in brands}
         | {w for *_, types in CATEGORIES.values() for t in types for w in t[3].split()}
         | {"men", "women", "kids", "pack", "set"})  # stands in for spaCy's NOUN/PROPN tags
# filler text; must not contain any attribute or option value (checked in build_catalog)
FEATURE_TEXT = ["made to the highest standards", "tested for everyday use", "ships in protective packaging",
                "backed by a one year guarantee", "designed by our in-house team", "a great gift idea"]
DESC_TEXT = ["Our customers love this product.", "A dependable everyday choice.", "Designed with care and quality materials.",
             "Satisfaction guaranteed or your money back.", "Simple, reliable and well made."]
REVIEW_TEXT = ["Exactly what I wanted.", "Good value for the money.", "Arrived quickly, works as described.",
               "Would buy again.", "Decent, but shipping took a while.", "My second order, still happy."]
COLOR_SET = ["black", "white", "blue", "gray", "grey", "red", "green", "pink", "beige", "brown", "purple", "yellow", "orange"]
STOPWORDS = {"i", "a", "an", "the", "and", "or", "with", "for", "of", "to", "in", "on", "is", "that", "which", "me",
             "my", "am", "need", "want", "looking", "find", "some", "it", "be", "s"}


def tokens(text):
    return re.findall(r"[a-z0-9]+", text.lower())


# -----------------------------------------------------------------------------
# WebShop's reward (goal.py), with the two library calls reimplemented


def token_set_ratio(a, b):
    """thefuzz's fuzz.token_set_ratio: 0-100 similarity of two strings' token sets."""
    ta, tb = set(tokens(a)), set(tokens(b))
    if not ta or not tb:
        return 0
    inter = " ".join(sorted(ta & tb))
    s1 = (inter + " " + " ".join(sorted(ta - tb))).strip()
    s2 = (inter + " " + " ".join(sorted(tb - ta))).strip()
    ratio = lambda x, y: round(100 * SequenceMatcher(None, x, y).ratio())
    return max(ratio(inter, s1), ratio(inter, s2), ratio(s1, s2))


def normalize_color(value):
    """A value containing a basic colour word becomes that word ("navy blue" -> "blue")."""
    return next((c for c in COLOR_SET if c in value), value)


def nouns(title):
    return [t for t in tokens(title) if t in NOUNS]


def type_reward(product, goal, tag=nouns):
    """goal.py's r_type (is it the right kind of product?) with its inputs. `tag` lists a title's nouns: the
    built-in lexicon here, a tagger for real titles in envs/webshop_data.py."""
    query_match = product.query == goal.query
    category_match = len({x.strip() for x in product.path.split("›")} & {x.strip() for x in goal.path.split("›")}) >= 2
    want = tag(goal.name)
    title_score = 0.2 if not want else len(set(tag(product.title)) & set(want)) / len(want)
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type, {"r_type": r_type, "title_score": title_score, "query_match": query_match, "category_match": category_match}


def attribute_matches(product, goal):
    """Goal attributes that fuzzy-match (> 85) one of the product's attributes or occur in its title, features or
    description (goal.py get_attribute_reward)."""
    title, feats, desc = product.title.lower(), " ".join(product.features).lower(), product.description.lower()
    return sum(1 for g in goal.attributes
               if any(token_set_ratio(p, g) > 85 for p in product.attributes) or g in title or g in feats or g in desc)


def reward(product, goal, options):
    """WebShop's purchase reward of buying `product` with `options` ({type: value}) for `goal` (a ShopTask), with
    the built-in catalog's option rule (departure 7). Returns (R in [0,1], dict of the terms)."""
    r_type, terms = type_reward(product, goal)
    n_attr = attribute_matches(product, goal)
    # options: each chosen option that matches a goal option (size exactly, others fuzzily), after colour normalisation
    title, feats, desc = product.title.lower(), " ".join(product.features).lower(), product.description.lower()
    goal_opts = [normalize_color(v) for _, v in goal.options]
    n_opt = 0
    for k, v in options.items():
        v = normalize_color(v)
        hit = v in goal_opts if k.lower() == "size" else any(token_set_ratio(g, v) > 85 for g in goal_opts)
        n_opt += hit or v in title or v in feats or v in desc
    n_opt = min(n_opt, len(goal_opts))  # departure 5: keeps R <= 1
    r_price = float(product.price <= goal.price_upper)
    R = r_type * (n_attr + n_opt + r_price) / (len(goal.attributes) + len(goal_opts) + 1)
    return R, {**terms, "n_attr": n_attr, "n_opt": n_opt, "r_price": r_price}


# -----------------------------------------------------------------------------
# Catalog + BM25


@dataclass
class Product:
    asin: str
    title: str
    query: str          # catalog query (the product type), goal.py's product['query']
    category: str       # top-level key of CATEGORIES
    path: str           # "root › subcategory › query"
    attributes: tuple
    options: dict       # {option type: tuple of values}
    price: float
    features: tuple
    description: str
    reviews: tuple      # ((rating, text), ...)
    price_tag: str = "" # the price as pages show it, if not f"${price:.2f}" (WebShop data: "$10.99 to $15.99")

    @property
    def shown_price(self):
        return self.price_tag or f"${self.price:.2f}"


class Catalog:
    """Products, their BM25 index and the reward rule that scores a purchase in this shop. `texts`: the indexed
    text per product (default: title + features); `reward_fn`: default the built-in `reward`."""

    def __init__(self, products, texts=None, reward_fn=None):
        self.products, self.reward = products, reward_fn or reward
        self.by_asin = {p.asin.lower(): i for i, p in enumerate(products)}
        self.by_query = {}
        for i, p in enumerate(products):
            self.by_query.setdefault(p.query, []).append(i)
        # BM25 (k1=0.9, b=0.4) over `texts`; per-posting weights precomputed
        k1, b = 0.9, 0.4
        docs = [tokens(t) for t in (texts or [p.title + " " + " ".join(p.features) for p in products])]
        avgdl = sum(map(len, docs)) / len(docs)
        tf = {}
        for d, toks in enumerate(docs):
            for t in toks:
                tf.setdefault(t, {}).setdefault(d, 0)
                tf[t][d] += 1
        n = len(docs)
        self.postings = {}
        for t, posting in tf.items():
            idf = math.log(1 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            self.postings[t] = [(d, idf * c * (k1 + 1) / (c + k1 * (1 - b + b * len(docs[d]) / avgdl))) for d, c in posting.items()]
        self._cache = {}

    def search(self, query):
        """Indices of the top-50 products for a query, best first (ties by catalog order)."""
        key = " ".join(t for t in tokens(query) if t not in STOPWORDS)
        if key not in self._cache:
            scores = {}
            for t in set(key.split()):
                for d, w in self.postings.get(t, ()):
                    scores[d] = scores.get(d, 0.0) + w
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = sorted(scores, key=lambda d: (-scores[d], d))[:TOP_K]
        return self._cache[key]


@lru_cache(maxsize=4)
def build_catalog(catalog_seed=0, products_per_type=40):
    rng = random.Random(f"catalog/{catalog_seed}")
    products, asins = [], set()
    for cat, (root, brands, pool, types) in CATEGORIES.items():
        for query, sub, type_title, _, opts, (lo, hi) in types:
            # a product's texts must not contain other attributes of its category or its own option
            # values (raw or colour-normalised), or WebShop's substring fallbacks would credit them
            own = {v for vals in opts.values() for v in vals}
            forbidden = set(pool) | own | {normalize_color(v) for v in own}
            for _ in range(products_per_type):
                brand = rng.choice(brands)
                attrs = rng.sample(pool, rng.randint(3, 5))
                n_title = rng.randint(0, 2)
                title = f"{brand} {type_title}" + "".join(", " + a.title() for a in attrs[:n_title])
                options = {}
                for k, vals in opts.items():
                    keep = set(rng.sample(vals, rng.randint(2, min(5, len(vals)))))
                    options[k] = tuple(v for v in vals if v in keep)  # in pool order
                features = tuple(f"{a.capitalize()}: {rng.choice(FEATURE_TEXT)}" for a in attrs[n_title:]) + (rng.choice(FEATURE_TEXT).capitalize(),)
                description = f"{title}. {rng.choice(DESC_TEXT)}"
                reviews = tuple((rng.randint(3, 5), rng.choice(REVIEW_TEXT)) for _ in range(2))
                asin = "B0" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(8))
                assert asin not in asins
                asins.add(asin)
                products.append(Product(asin, title, query, cat, f"{root} › {sub} › {query}", tuple(attrs), options,
                                        rng.randint(lo, hi - 1) + 0.99, features, description, reviews))
                text = (title + " " + " ".join(features) + " " + description).lower()
                leak = [w for w in forbidden if w in text and w not in attrs]
                assert not leak, f"catalog text {text!r} leaks attribute/option words {leak}"
    return Catalog(products)


# -----------------------------------------------------------------------------
# Goals (tasks)


@dataclass(frozen=True)
class ShopTask:
    instruction: str
    category: str          # task_type
    asin: str              # the target product the goal was written from (always satisfies it)
    query: str             # goal.py goal['query']
    name: str              # goal['name'] = target title
    path: str              # goal['product_category']
    attributes: tuple
    options: tuple         # ((option type, value), ...) sorted by type, like goal.py
    price_upper: float
    catalog: tuple         # (catalog_seed, products_per_type), or ("webshop", data dir, full, catalog_seed): get_catalog
    pair_options: bool = False  # WebShop synthetic goals: goal.py matches options as "type value" (webshop_data.reward)
    goal_options: tuple = ()    # WebShop data: goal.py's goal_options as its reward reads them (webshop_data.reward)

    @property
    def task_type(self):  # the contract's name for it (not a field: asdict and the JSON form are unchanged)
        return self.category


def _article(phrase):
    if phrase.split()[-1].endswith("s") and not phrase.endswith("ss"):
        return ""  # plural: "i need protein bars"
    return "an " if phrase[0] in "aeiou" else "a "


def get_catalog(key):
    """The catalog a task is played in: the generated one, or WebShop's own files (envs/webshop_data.py)."""
    if key[0] == "webshop":
        from envs import webshop_data
        return webshop_data.load_catalog(*key[1:])
    return build_catalog(*key)


def make_tasks(split, n, seed=0, catalog_seed=0, products_per_type=40, data=None, human_goals=False, full=False):
    """n goals of `split`. With `data` (a WebShop data directory) they are WebShop's own goals over its own
    products (envs/webshop_data.py; seed and products_per_type are then unused), else generated ones."""
    if data:
        from envs import webshop_data
        return webshop_data.make_tasks(split, n, data, human_goals=human_goals, full=full, catalog_seed=catalog_seed)
    cat = build_catalog(catalog_seed, products_per_type)
    queries = sorted(q for q in cat.by_query if (q in UNSEEN_TYPES) == (split == "eval_unseen"))
    tasks = []
    for i in range(n):
        rng = random.Random(f"shop/{seed}/{split}/{i}")
        p = cat.products[rng.choice(cat.by_query[rng.choice(queries)])]
        keep = set(rng.sample(p.attributes, rng.randint(1, 3)))
        attrs = tuple(a for a in p.attributes if a in keep)
        options = tuple((k, rng.choice(v)) for k, v in sorted(p.options.items()))
        price_upper = max(rng.sample([x for x in PRICE_RANGE if x > p.price][:4], 2))
        a, art = " and ".join(attrs), _article(p.query)
        text = rng.choice([f"i need {art}{a} {p.query}", f"i am looking for {art}{p.query} that is {a}",
                           f"find me {art}{a} {p.query}", f"i want {art}{p.query} which is {a}"])
        text += " with " + ", and ".join(f"{k}: {v}" for k, v in options)
        text += f", and price lower than {price_upper:.2f} dollars"
        tasks.append(ShopTask(text, p.category, p.asin, p.query, p.title, p.path, attrs, options, price_upper,
                              (catalog_seed, products_per_type)))
    return tasks


# -----------------------------------------------------------------------------
# The environment

_ACTION = re.compile(r"^\s*(search|click)\[(.*)\]\s*$", re.S | re.I)


class Env:
    """One shopping episode at a time. reset(task) -> Observation; step(action) -> (obs, r, done, info)."""

    def reset(self, task):
        self.task, self.cat = task, get_catalog(task.catalog)
        self.page, self.query, self.results, self.page_no = "search", "", [], 1
        self.item, self.sub, self.options = -1, "", {}
        self.t, self.done, self._sat = 0, False, {}
        self._render()
        return self._obs()

    def _obs(self):
        return Observation(self.text, self.text, self.admissible, self.task.instruction, self.task.category)

    def _render(self):
        """Page text and clickables ({button: payload}) of the current state."""
        head = f"Instruction: [SEP] {self.task.instruction} [SEP] Back to Search"
        click = {"back to search": ("search",)}
        if self.page == "search":
            self.text, self.clickables = f"WebShop [SEP] Instruction: [SEP] {self.task.instruction} [SEP] Search", {}
            self.admissible = ("search[<your query>]",)
            return
        if self.page == "results":
            parts = [head, f"Page {self.page_no} (Total results: {len(self.results)})"]
            if self.page_no > 1:
                parts.append("< Prev")
                click["< prev"] = ("page", self.page_no - 1)
            if self.page_no * PER_PAGE < len(self.results):
                parts.append("Next >")
                click["next >"] = ("page", self.page_no + 1)
            for i in self.results[(self.page_no - 1) * PER_PAGE: self.page_no * PER_PAGE]:
                p = self.cat.products[i]
                parts += [p.asin, p.title, p.shown_price]
                click[p.asin.lower()] = ("item", i)
        elif self.page == "item":
            p = self.cat.products[self.item]
            parts = [head, "< Prev"]
            click["< prev"] = ("results",)
            for k, vals in p.options.items():
                parts.append(k)
                for v in vals:
                    parts.append(v)
                    click[v] = ("option", k, v)
            parts += [p.title, f"Price: {p.shown_price}", "Rating: N.A.", "Description", "Features", "Reviews", "Buy Now"]
            for s in ("description", "features", "reviews"):
                click[s] = ("sub", s)
            click["buy now"] = ("buy",)
        else:  # sub-page of the item
            p = self.cat.products[self.item]
            parts = [head, "< Prev"]
            click["< prev"] = ("back_item",)
            if self.sub == "description":
                parts.append(p.description)
            elif self.sub == "features":
                parts += p.features
            else:
                for rating, text in p.reviews:
                    parts += [text, f"Rating: {rating}/5"]
        self.text, self.clickables = " [SEP] ".join(parts), click
        self.admissible = tuple(f"click[{c}]" for c in click)

    def _click(self, payload):
        kind = payload[0]
        if kind == "search":
            self.page, self.query, self.results, self.page_no, self.options = "search", "", [], 1, {}
        elif kind == "page":
            self.page_no = payload[1]
        elif kind == "item":
            self.page, self.item, self.options = "item", payload[1], {}
        elif kind == "option":
            self.options[payload[1]] = payload[2]
        elif kind == "sub":
            self.page, self.sub = "sub", payload[1]
        elif kind == "back_item":
            self.page = "item"
        elif kind == "results":
            self.page, self.options = "results", {}
        else:  # buy
            return self.cat.reward(self.cat.products[self.item], self.task, self.options)[0]
        return None

    def step(self, action):
        assert not self.done, "episode is over: reset() before stepping again"
        self.t += 1
        m = _ACTION.match(action) if isinstance(action, str) else None
        ok, score = False, None
        if m:
            verb, arg = m.group(1).lower(), " ".join(m.group(2).lower().split())
            if verb == "search" and self.page == "search" and arg:
                ok = True
                self.page, self.query, self.results, self.page_no = "results", arg, self.cat.search(arg), 1
            elif verb == "click" and arg in self.clickables:
                ok = True
                score = self._click(self.clickables[arg])
        if score is not None:  # bought: the episode ends on WebShop's done page
            self.text = f"Thank you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP] {score:.2f}"
            self.admissible, self.clickables = (), {}
        elif ok:
            self._render()
        won = score is not None and score >= 1.0 - 1e-9
        truncated = score is None and self.t >= MAX_STEPS
        self.done = score is not None or truncated
        info = {"won": won, "score": score or 0.0, "truncated": truncated, "action_admissible": ok, "steps": self.t}
        return self._obs(), score or 0.0, self.done, info

    def _observable_action(self):
        """Reads only the current page, the instruction and the options clicked on this item page so far (the
        last actions): on a results page the first product; on an item page the instruction's option values
        that the page offers, in the goal's order, then buy."""
        if self.page == "item":
            offered = self.cat.products[self.item].options
            for k, v in self.task.options:
                if v in offered.get(k, ()) and self.options.get(k) != v:
                    return f"click[{v}]"
            return "click[buy now]"
        page = self.results[(self.page_no - 1) * PER_PAGE:]  # results page
        return f"click[{self.cat.products[page[0]].asin.lower()}]" if page else "click[back to search]"

    def state_key(self):
        """Exact episode state (no step counter), hashable."""
        return (self.page, self.query, self.page_no, self.item, self.sub, tuple(sorted(self.options.items())))

    # -- scripted expert (privileged: knows the goal's terms) ---------------

    def _choice(self, i):
        """Options the expert would pick on product i, or None if buying it cannot earn R = 1."""
        if i not in self._sat:
            p = self.cat.products[i]
            opts = {k: v for k, v in self.task.options if v in p.options.get(k, ())}
            self._sat[i] = opts if self.cat.reward(p, self.task, opts)[0] >= 1.0 - 1e-9 else None
        return self._sat[i]

    def _first_hit(self, results):
        return next((j for j, i in enumerate(results[:3 * PER_PAGE]) if self._choice(i) is not None), None)

    def expert_query(self):
        """The instruction's leading clause (what a policy can learn to copy); the target's title if that
        clause finds no product earning R = 1 within the first three result pages."""
        q = self.task.instruction.split(" with ")[0].split(", and price")[0]
        return q if self._first_hit(self.cat.search(q)) is not None else self.task.name.lower()

    def expert_action(self, observable=False):
        """The privileged expert (default): the first product that earns R = 1 (wins every task).
        observable=True decides from the current page alone: search the instruction's product phrase, open the
        first result, click the instruction's options that the page offers, buy. It wins about 62% of tasks
        (score 0.90) and is what a policy can imitate with one step of history (bootstrap.py)."""
        if self.page == "search":
            return f"search[{self.expert_query()}]"
        if self.page == "sub":
            return "click[< prev]"
        if observable:
            return self._observable_action()
        if self.page == "item":
            opts = self._choice(self.item)
            if opts is None:
                return "click[< prev]"
            for k, v in opts.items():
                if self.options.get(k) != v:
                    return f"click[{v}]"
            return "click[buy now]"
        j = self._first_hit(self.results)  # results page
        if j is None:
            return "click[back to search]"
        want = j // PER_PAGE + 1
        if want != self.page_no:
            return "click[next >]" if want > self.page_no else "click[< prev]"
        return f"click[{self.cat.products[self.results[j]].asin.lower()}]"


# -----------------------------------------------------------------------------
# The embedded policy (bootstrap.py; envs/__init__.py's contract)

_OPTIONS = {"beauty": "size and scent or color", "clothing": "color and size", "electronics": "color, length or style",
            "grocery": "flavor and size", "home": "color and size"}
SKILLS = {cat: dict(  # one reference skill per product category (the task type)
    when=[f"The task asks you to buy a {cat} product with some attributes, options and a price limit.",
          f"Use this when shopping for a {cat} item with a required {opts}."],
    strategy=["Search for the product words of the instruction, open the first result, then click the options "
              "it names and buy.",
              f"Copy the product phrase into the search, open the top result and click the {opts} the "
              "instruction asks for before you buy."],
    steps=["search the product phrase | click the first result | click each option the instruction names | "
           "click buy now"]) for cat, opts in _OPTIONS.items()}
WRONG_SKILL = {"beauty": "home", "clothing": "electronics", "electronics": "grocery", "grocery": "clothing",
               "home": "beauty"}
# Pages are long (one step of history keeps prompts near 450 tokens), products are picked by ASIN, and copying the
# query and ASINs needs more data and steps (450 steps on 600 demos: 0% success; these: 13% seen). Skills as in
# the household: the plain demos mostly lack two categories, which skill-guided demos cover.
BOOTSTRAP = dict(history=1, entity_tokens=1, demos=1200, sft_steps=1000, noise=0.15, rare="grocery,home",
                 rare_plain=0.2, rare_naive=0.0, wrong_frac=0.0, skill_frac=0.4)


def entity_tokens(tasks):
    """bootstrap.py --entity-tokens 1: every ASIN of the tasks' catalog is one token (clicking a product copies
    one token)."""
    return [p.asin.lower() for p in get_catalog(tasks[0].catalog).products]
