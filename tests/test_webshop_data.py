"""Tests of envs/webshop_data.py: WebShop's own data files played in the shop env.

A tiny data directory in WebShop's file formats (items_shuffle_1000.json, items_ins_v2_1000.json,
items_human_ins.json) is written to tmp_path; loading, goals, splits, search, the expert, goal.py's reward
and the error messages are checked against what WebShop's engine.py / goal.py / text env would do. The
reward's fuzzy matches are thefuzz 0.19.0's, with the numbers derived by hand in the tests' docstrings.
"""

import dataclasses
import itertools
import json
import random

import pytest

import envs
from envs import webshop_data as W
from envs.shop import Product, ShopTask, PRICE_RANGE

COLORS = ["Black", "White", "Navy Blue", "Heather Grey", "Red", "Forest Green", "Pink", "Beige", "Brown", "Purple",
          "Light Blue", "Charcoal", "Olive", "Mustard Yellow"]


@pytest.fixture(autouse=True)
def no_spacy(monkeypatch):
    """The deterministic noun stand-in, whether or not spaCy's model is installed here."""
    monkeypatch.setattr(W, "nouns", W.content_nouns)


def _opts(*values):
    return [{"value": v, "image": f"https://m.media-amazon.com/images/I/{i}.jpg"} for i, v in enumerate(values)]


def _product(asin, name, category, query, path, pricing, options, bullets, description):
    """A record shaped like items_shuffle_1000.json's, including fields the loader ignores."""
    rec = {"name": name, "full_description": description, "list_price": "", "images": ["https://x/1.jpg"],
           "product_category": path, "average_rating": 4.5, "small_description": bullets, "model": "",
           "customization_options": options, "seller_id": "A1", "seller_name": "Shop", "fulfilled_by_amazon": True,
           "fast_track_message": "", "aplus_present": "", "small_description_old": "", "category": category,
           "query": query, "page": 1, "asin": asin, "product_information": {}, "brand": name.split()[0], "brand_url": ""}
    if pricing is not None:
        rec["pricing"] = pricing
    return rec


SHOE_SIZES = [str(7 + 0.5 * i).removesuffix(".0") for i in range(14)]
PRODUCTS = [
    _product("B07LOTION1", "Aurelia Shea Butter Body Lotion for Dry Skin, Fragrance Free, 16 Fl Oz", "beauty", "Body Lotion ",
             "Beauty & Personal Care › Skin Care › Body › Lotions", "$12.99",
             {"Size": _opts("8 Fl Oz", "16 Fl Oz"), "Scent": _opts("Lavender", "Vanilla/Coconut", "Unscented")},
             ["Deep moisture for dry skin", "Made with shea butter"], "A rich everyday lotion."),
    _product("B08TSHIRT1", "Arcwear Men's Crew Neck T-Shirt, Cotton Short Sleeve Tee", "fashion", "men's t-shirts",
             "Clothing, Shoes & Jewelry › Men › Clothing › Shirts › T-Shirts", "$8.99 - $15.99",
             {"Color": _opts(*COLORS[:10]), "Size": _opts("Small", "Medium", "Large", "X-Large", "XX-Large",
                                                          "3X-Large", "4X-Large", "5X-Large")},
             ["Machine wash cold", "Soft cotton jersey"], "A classic crew neck tee."),
    _product("B09SNEAKR1", "Driftline Men's Running Shoes Lightweight Breathable Sneakers", "fashion", "men's running shoes",
             "Clothing, Shoes & Jewelry › Men › Shoes › Athletic › Running", "$45.50",
             {"Color": _opts(*COLORS[:12]), "Size": _opts(*SHOE_SIZES)}, ["Rubber sole", "Mesh upper"], "Light on your feet."),
    _product("B07PILLOW1", "Cozyhaus Decorative Velvet Throw Pillow Covers Set of 2", "furniture", "throw pillow covers",
             "Home & Kitchen › Home Décor Products › Decorative Pillows › Throw Pillow Covers", "$19.99",
             {"Color": _opts(*COLORS[2:14]), "Size": _opts(*[f"{s}x{s} inch" for s in range(12, 32, 2)])},
             ["Hidden zipper", "Soft velvet"], "Covers for the living room sofa."),
    _product("B08DESK001", "Dwellin Computer Desk for Home Office, Small Writing Table", "furniture", "computer desks",
             "Home & Kitchen › Furniture › Home Office Furniture › Desks", "$89.99 - $129.99",
             {"Color": _opts(*COLORS[:8]), "Size": _opts("32 inch", "40 inch", "47 inch", "55 inch", "63 inch", "71 inch"),
              "Style": _opts("Classic", "Modern", "Farmhouse", "With Drawer", "With Shelf")},
             ["Easy assembly in 15 minutes", "Steel frame"], "A compact desk."),
    _product("B07HEADPH1", "Boltech Wireless Noise Cancelling Over Ear Headphones", "electronics", "wireless headphones",
             "Electronics › Headphones, Earbuds & Accessories › Headphones › Over-Ear", "$1,299.00",
             {"Color": _opts("Black", "Silver"), "Style": None}, ["40 hour battery"], "Studio sound."),
    _product("B01COFFEE1", "Brookside Medium Roast Ground Coffee, 12 Ounce Bag", "food", "ground coffee",
             "Grocery & Gourmet Food › Beverages › Coffee › Ground Coffee", None, None, "Smooth medium roast", None),
    _product("B00TOWELS1", "Galloway Cotton Bath Towel Set", "furniture", "bath towels",
             "Home & Kitchen › Bath › Towels", "$24.00", None, ["Absorbent"], "Six towels."),
    _product("nan", "A scraping artefact", "beauty", "x", "a › b", "$1.00", None, [], ""),
    _product("B0TOOLONG123", "An over-long ASIN", "beauty", "x", "a › b", "$1.00", None, [], ""),
    _product("B07LOTION1", "A repeated ASIN (skipped)", "beauty", "x", "a › b", "$1.00", None, [], ""),
]
ATTRS = {  # items_ins_v2_1000.json; B00TOWELS1 has no entry
    "B07LOTION1": {"attributes": ["dry skin", "shea butter", "fragrance free"],
                   "instruction": "i am looking for a body lotion for dry skin that is fragrance free",
                   "instruction_attributes": ["dry skin", "fragrance free"]},
    "B08TSHIRT1": {"attributes": ["machine wash", "short sleeve", "cotton"],
                   "instruction": "i want a machine wash men's crew neck t-shirt", "instruction_attributes": ["machine wash", "short sleeve"]},
    "B09SNEAKR1": {"attributes": ["lightweight", "breathable", "rubber sole"],
                   "instruction": "i need lightweight men's running shoes", "instruction_attributes": ["lightweight", "rubber sole"]},
    "B07PILLOW1": {"attributes": ["living room", "velvet", "machine washable"],
                   "instruction": "i'm looking for velvet throw pillow covers for my living room",
                   "instruction_attributes": ["velvet", "living room"]},
    "B08DESK001": {"attributes": ["easy assemble", "home office", "space saving"],
                   "instruction": "i need an easy assemble computer desk for my home office",
                   "instruction_attributes": ["easy assemble", "home office"]},
    "B07HEADPH1": {"attributes": ["noise cancelling", "wireless"], "instruction": "i want noise cancelling wireless headphones",
                   "instruction_attributes": ["noise cancelling"]},
    "B01COFFEE1": {"attributes": ["medium roast"], "instruction": "i want medium roast ground coffee",
                   "instruction_attributes": ["medium roast"]},
}
HUMAN = {  # items_human_ins.json
    "B07LOTION1": [{"asin": "B07LOTION1", "instruction": "I need a fragrance free body lotion for dry skin, 16 fl oz.",
                    "attributes": ["dry skin"], "options": ["size: 16 fl oz"], "instruction_attributes": ["fragrance free", "dry skin"],
                    "instruction_options": ["16 fl oz"], "assignment_id": "3X1", "worker_id": "A2"},
                   {"asin": "B07LOTION1", "instruction": "any lotion", "instruction_attributes": [], "instruction_options": []}],
    "B08TSHIRT1": [{"asin": "B08TSHIRT1", "instruction": "find me a navy blue men's tee with short sleeves in large",
                    "instruction_attributes": ["short sleeve"], "instruction_options": ["Navy Blue", "large", "with pocket"]}],
}
N_SYNTH = 6 + 10 * 8 + 12 * 14 + 12 * 10 + 8 * 6 * 5 + 2 + 1  # option combinations of the products with an instruction


def write(d, products=PRODUCTS, attrs=ATTRS, human=HUMAN, small=True):
    d.mkdir(parents=True, exist_ok=True)
    names = W.FILES[not small]
    for name, obj in ((names[0], products), (names[1], attrs), (W.HUMAN_FILE, human)):
        if obj is not None:
            (d / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return d


@pytest.fixture
def data(tmp_path):
    return write(tmp_path / "data")


# -----------------------------------------------------------------------------
# products, goals, splits


def test_products_load_as_webshop_builds_them(data):
    """engine.py load_products: 'nan', over-long and repeated ASINs skipped; query lowercased and stripped; options
    lowercased with '/' -> ' | ' and null types dropped; one price, a range (shown '$a to $b', bought at a price
    inside it) or none ($100.0); a single-string small_description is one bullet; items_ins_v2's attribute list
    (['DUMMY_ATTR'] without an entry); no reviews."""
    cat = W.load_catalog(data)
    assert [p.asin for p in cat.products] == [r["asin"] for r in PRODUCTS[:8]]
    lotion, tee, _, _, _, phones, coffee, towels = cat.products
    assert lotion == Product("B07LOTION1", PRODUCTS[0]["name"], "body lotion", "beauty",
                             "Beauty & Personal Care › Skin Care › Body › Lotions", ("dry skin", "shea butter", "fragrance free"),
                             {"size": ("8 fl oz", "16 fl oz"), "scent": ("lavender", "vanilla | coconut", "unscented")},
                             12.99, ("Deep moisture for dry skin", "Made with shea butter"), "A rich everyday lotion.", (), "$12.99")
    assert 8.99 <= tee.price <= 15.99 and tee.price_tag == "$8.99 to $15.99"
    assert (phones.price, phones.price_tag, list(phones.options)) == (1299.0, "$1299.0", ["color"])
    assert (coffee.price, coffee.price_tag, coffee.options, coffee.features, coffee.description) == (
        100.0, "$100.0", {}, ("Smooth medium roast",), "")
    assert towels.attributes == ("DUMMY_ATTR",)  # no items_ins_v2 entry: engine.py's placeholder
    assert W.load_catalog(str(data)) is cat  # cached per directory


def test_synthetic_goals_and_splits(data):
    """goal.py get_synthetic_goals: one goal per option combination (types sorted) of each product with an
    instruction, '<instruction> with <type>: <value>, and ..., and price lower than X.00 dollars', X the larger of
    two of the next four $10 steps above the price (none above $990: no price text, limit 1e6). Splits: the goal
    list shuffled as random.seed(233); random.shuffle, then eval_unseen = goals 0..499, eval_seen = 500..1499,
    train = 500.. (GiGPO's pool); n tasks are a prefix."""
    cat = W.load_catalog(data)
    unseen = envs.make("shop", "eval_unseen", data=str(data), n_tasks=10_000).tasks
    seen = envs.make("shop", "eval_seen", data=str(data), n_tasks=10_000).tasks
    train = envs.make("shop", "train", data=str(data), n_tasks=10_000).tasks
    assert (len(unseen), len(seen), len(train)) == (500, N_SYNTH - 500, N_SYNTH - 500)
    assert seen == train  # fewer than 1500 goals: WebShop's eval range is all of GiGPO's train pool here
    # WebShop's order, rebuilt from the files: products in file order, option combinations, then the seed-233 shuffle
    order = []
    for rec in PRODUCTS[:7]:
        opts = {k.lower(): [o["value"].replace("/", " | ").lower() for o in v] for k, v in (rec["customization_options"] or {}).items() if v}
        names = sorted(opts)
        order += [(rec["asin"], tuple(zip(names, combo))) for combo in itertools.product(*(opts[k] for k in names))]
    state = random.getstate()
    random.seed(233)  # WebShop's own calls (SimServer), on the global generator
    random.shuffle(order)
    random.setstate(state)
    assert [(t.asin, t.options) for t in unseen + train] == order
    assert envs.make("shop", "train", data=str(data), n_tasks=7).tasks == train[:7]
    for t in unseen + train:
        p = cat.products[cat.by_asin[t.asin.lower()]]
        info = ATTRS[t.asin]
        assert (t.category, t.query, t.name, t.path, t.attributes) == (
            p.category, p.query, p.title, p.path, tuple(info["instruction_attributes"]))
        opt_text = (" with " + ", and ".join(f"{k}: {v}" for k, v in t.options)) if t.options else ""
        if t.asin == "B07HEADPH1":
            assert t.price_upper == W.NO_LIMIT and t.instruction == info["instruction"] + opt_text
        else:
            assert t.price_upper in [x for x in PRICE_RANGE if x > p.price][1:4]
            assert t.instruction == info["instruction"] + opt_text + f", and price lower than {t.price_upper:.2f} dollars"
        assert t.pair_options and t.catalog == ("webshop", str(data), False, 0)


def test_search_and_expert_buy_the_target(data):
    """Our BM25 over WebShop's index text puts the target first for its title; the privileged expert (search the
    instruction's product phrase, open a product that earns R = 1, click the goal's options, buy) wins every goal
    with reward 1.0; the scripted path (search the title, open the target, click its options, buy) pays 1.0 too,
    and the pages show WebShop's price tags."""
    suite = envs.make("shop", "eval_unseen", data=str(data), n_tasks=60)
    env = suite.new_env()
    for task in suite.tasks:
        obs = env.reset(task)
        assert env.cat.search(task.name)[0] == env.cat.by_asin[task.asin.lower()]
        for _ in range(suite.max_steps):
            obs, r, done, info = env.step(env.expert_action())
            if done:
                break
        assert info["won"] and r == 1.0, task.instruction
    task = next(t for t in suite.tasks if t.asin == "B08TSHIRT1")
    env.reset(task)
    res = env.step(f"search[{task.name}]")[0]
    assert f"B08TSHIRT1 [SEP] {task.name} [SEP] $8.99 to $15.99" in res.text
    item = env.step("click[b08tshirt1]")[0]
    assert "[SEP] Price: $8.99 to $15.99 [SEP] Rating: N.A. [SEP]" in item.text
    for _, v in task.options:
        env.step(f"click[{v}]")
    assert env.step("click[buy now]")[1:3] == (1.0, True)


def test_human_goals(data):
    """goal.py get_human_goals: one goal per instruction with attributes (others skipped), text = the instruction
    without trailing dots + the price text, options = the bare instruction_options (typed on the target product
    where it offers the value, for the expert); too few goals for train is a clear error."""
    tasks = envs.make("shop", "eval_unseen", data=str(data), human_goals=True).tasks
    assert len(tasks) == 2
    lotion, tee = sorted(tasks, key=lambda t: t.asin)
    assert lotion.instruction.startswith("I need a fragrance free body lotion for dry skin, 16 fl oz, and price lower than ")
    assert lotion.options == (("size", "16 fl oz"),) and lotion.attributes == ("fragrance free", "dry skin")
    assert tee.options == (("color", "navy blue"), ("size", "large"), ("", "with pocket")) and not tee.pair_options
    cat = W.load_catalog(data)
    p = cat.products[cat.by_asin["b08tshirt1"]]
    R, t = W.reward(p, tee, {"color": "navy blue", "size": "large"})
    assert t["n_opt"] == 2 and R == pytest.approx((1 + 2 + 1) / (1 + 3 + 1))
    with pytest.raises(W.WebShopDataError, match=r"split 'train' is WebShop's goal indices 500\.\., but only 2 goals"):
        envs.make("shop", "train", data=str(data), human_goals=True)


def test_entry_point_and_tasks_as_json(data):
    """envs.make('shop', split, data=...) gives a Suite of WebShop goals whose task_type is the category; tasks
    survive a JSON round trip (the catalog key becomes a list) and still play; without data the generated
    catalog is used as before."""
    suite = envs.make("shop", "eval_unseen", data=data, n_tasks=3)
    task = suite.tasks[0]
    obs = suite.new_env().reset(task)
    assert obs.text == f"WebShop [SEP] Instruction: [SEP] {task.instruction} [SEP] Search" and obs.task_type == task.category
    back = ShopTask(**json.loads(json.dumps(dataclasses.asdict(task))))
    env = suite.new_env()
    env.reset(back)
    assert env.cat is W.load_catalog(data) and env.step(env.expert_action())[0].text.startswith("Instruction:")
    assert envs.make("shop", "train", n_tasks=1).tasks[0].catalog == (0, 40)


# -----------------------------------------------------------------------------
# goal.py's reward on hand-made WebShop-style products


def _p(**kw):
    base = dict(asin="B000000001", title="Driftline Men's Running Shoes Lightweight Sneakers", query="men's running shoes",
                category="fashion", path="clothing › men › shoes › running", attributes=("lightweight",),
                options={"color": ("black", "navy blue"), "size": ("large", "x-large")}, price=30.0,
                features=("Rubber sole",), description="Red laces included.", reviews=())
    base.update(kw)
    return Product(**base)


def _g(**kw):
    base = dict(instruction="i need lightweight running shoes", category="fashion", asin="B000000001",
                query="men's running shoes", name="Driftline Men's Running Shoes Lightweight Sneakers",
                path="clothing › men › shoes › running", attributes=("lightweight",), options=(("size", "large"),),
                price_upper=40.0, catalog=("webshop", "/d", False, 0), pair_options=True)
    base.update(kw)
    return ShopTask(**base)


def test_webshop_reward_type_terms():
    """r_type on real-looking titles (nouns = content words: brand, type and descriptive words): 1.0 from a noun
    overlap > 0.2 alone, 0.5 for 0.1 <= overlap <= 0.2 without a query or category match, 0.1 below 0.1 and 0.0
    at none despite query and category matches; a goal name without nouns scores 0.2 (1.0 with a query match)."""
    g = _g()  # nouns: driftline men running shoes lightweight sneakers (6)
    assert W.content_nouns(g.name) == ["driftline", "men", "running", "shoes", "lightweight", "sneakers"]
    other = dict(query="x", path="home › kitchen › y")
    r, t = W.reward(_p(title="Acme Running Shoes", **other), g, {"size": "large"})  # 2/6 > 0.2
    assert (t["query_match"], t["category_match"], t["r_type"], r) == (False, False, 1.0, 1.0)
    r, t = W.reward(_p(title="Acme Trail Shoes", **other), g, {"size": "large"})  # 1/6: 0.5
    assert t["title_score"] == pytest.approx(1 / 6) and t["r_type"] == 0.5 and r == 0.5
    g12 = _g(name=g.name + " Gym Trainers Walking Jogging Tennis Athletic")  # 12 nouns
    r, t = W.reward(_p(title="Acme Sneakers"), g12, {"size": "large"})  # 1/12 < 0.1, query + category match
    assert t["query_match"] and t["category_match"] and t["r_type"] == 0.1 and r == pytest.approx(0.1)
    r, t = W.reward(_p(title="Acme Coffee Mug"), g, {"size": "large"})
    assert t["r_type"] == 0.0 and r == 0.0
    assert W.reward(_p(title="Acme Coffee Mug"), _g(name="2 for 1"), {"size": "large"})[1]["r_type"] == 1.0
    assert W.reward(_p(title="Acme Coffee Mug", **other), _g(name="2 for 1"), {"size": "large"})[1]["r_type"] == 0.5


def test_webshop_reward_option_and_price_terms():
    """goal.py's option rule, unlike the built-in shop's: every option fuzzy (> 85) after WebShop's colour
    normalisation, counted per goal option, no product-text fallback. Synthetic goals compare against 'type value'
    (goal_options.items()), so 'large' satisfies 'size: x-large' but 'x-large' misses 'size: large'; bare (human)
    values match both ways. Price over the limit loses its 1/(|attrs|+|opts|+1) share."""
    p, opt = _p(), lambda g, chosen: W.reward(_p(), g, chosen)[1]["n_opt"]
    assert W.reward(p, _g(), {"size": "large"})[0] == 1.0
    assert opt(_g(), {"size": "x-large"}) == 0 and opt(_g(options=(("size", "x-large"),)), {"size": "large"}) == 1
    assert opt(_g(options=(("", "large"),), pair_options=False), {"size": "x-large"}) == 1
    assert opt(_g(options=(("", "large"), ("", "x-large")), pair_options=False), {"size": "x-large"}) == 2  # per goal option
    # colours: "navy blue" and "royal blue" both normalise to "blue", which is inside "color navy blue"; a value
    # holding a colour word normalises to it ("stonewash" -> "ash", "rustic" -> "rust") and then misses its own
    # synthetic goal ("color stonewash", "style rustic"): even the target cannot earn R = 1 there, as in WebShop
    assert opt(_g(options=(("color", "navy blue"),)), {"color": "royal blue"}) == 1
    assert opt(_g(options=(("color", "black"),)), {"color": "jet black"}) == 1
    assert opt(_g(options=(("color", "stonewash"),)), {"color": "stonewash"}) == 0
    assert opt(_g(options=(("style", "rustic"),)), {"style": "rustic"}) == 0
    assert opt(_g(options=(("", "rustic"),), pair_options=False), {"style": "rustic"}) == 1
    assert W.normalize_color("stonewash") == "ash"
    assert opt(_g(options=(("color", "red"),)), {"color": "black"}) == 0  # "red" is in the description: no fallback
    r, t = W.reward(_p(price=40.01), _g(), {"size": "large"})
    assert t["r_price"] == 0.0 and r == pytest.approx(2 / 3)


# -----------------------------------------------------------------------------
# goal.py's reward where thefuzz 0.19's string processing matters, on data in WebShop's file formats


def test_thefuzz_019_string_processing_by_hand():
    """fuzz_tokens is thefuzz 0.19's full_process(force_ascii=True).split(): underscores stay inside words,
    characters 128-255 are dropped, other letters (fullwidth) are kept and lowercased, a (type, value) pair is
    read through its repr. token_set_ratio's numbers, by hand from difflib's matching blocks (M matched characters
    of total length T: round(200 M / T)):
      "easy_clean" vs "easy clean": no shared token; "easy_clean" vs "clean easy": M 5 ("clean"), T 20 -> 50
      "naïve" vs "naive": "nave" vs "naive": M 4 ("na", "ve"), T 9 -> 89
      "Ｌarge" vs "large": "ｌarge" vs "large": M 4 ("arge"), T 10 -> 80
      "x\\tlarge" vs ("size", "x\\tlarge"): {x, large} vs {size, x, tlarge}, shared "x"; "x" vs "x large" 25,
        "x" vs "x size tlarge" 14, "x large" vs "x size tlarge": M 7 ("x ", "large"), T 20 -> 70
      "blue" vs ("color", "navy\\xa0blue"): {blue} vs {color, navy, xa0blue}: "blue" vs "color navy xa0blue": M 4, T 22 -> 36
      "rust" vs "Rustic": M 4, T 10 -> 80."""
    assert W.fuzz_tokens("Easy_Clean mat") == ["easy_clean", "mat"]
    assert W.fuzz_tokens("naïve café") == ["nave", "caf"]
    assert W.fuzz_tokens("Ｌarge") == ["ｌarge"]
    assert W.fuzz_tokens(("color", "navy\xa0blue")) == ["color", "navy", "xa0blue"]
    assert W.fuzz_tokens(("size", "x\tlarge")) == ["size", "x", "tlarge"]
    assert W.fuzz_tokens("navy\xa0blue") == ["navyblue"] and W.fuzz_tokens("x\tlarge") == ["x", "large"]
    cases = [("easy_clean", "easy clean", 50), ("naïve", "naive", 89), ("Ｌarge", "large", 80),
             ("x\tlarge", ("size", "x\tlarge"), 70), ("blue", ("color", "navy\xa0blue"), 36), ("rust", "Rustic", 80),
             ("large", ("size", "x-large"), 100), ("easy_clean", "Easy_Clean", 100), ("", "x", 0), ("!", "x", 0)]
    for a, b, want in cases:
        assert W.token_set_ratio(a, b) == W.token_set_ratio(b, a) == want, (a, b)
    assert W.normalize_color("Dark red") == "red" and W.normalize_color("dark red") == "dark"  # case-sensitive
    assert W.normalize_color("Rustic") == "Rustic" and W.normalize_color("rustic") == "rust"
    assert W.normalize_color(("color", "olive")) == "olive" and W.normalize_color(("color", "navy blue")) == ("color", "navy blue")


FUZZ_PRODUCTS = [
    _product("B0MAT00001", "Kitchen Floor Mat", "furniture", "kitchen mats", "Home & Kitchen › Kitchen › Rugs › Mats",
             "$15.00", None, None, None),
    _product("B0TEE00001", "Arcwear Cotton Tee", "fashion", "men's t-shirts", "Clothing › Men › Shirts › T-Shirts", "$20.00",
             {"Color": _opts("Navy\u00a0Blue", "Olive"), "Size": _opts("X\tLarge", "Small", "XX\u00a0Large")}, ["Crew neck"], "A tee."),
    _product("B0ART00001", "Naive Art Print", "furniture", "wall art", "Home & Kitchen › Wall Art › Prints", "$25.00",
             None, ["Ready to hang"], "A print."),
    _product("B0DESK0001", "Dwellin Writing Desk", "furniture", "desks", "Home & Kitchen › Furniture › Desks", "$80.00",
             {"Style": _opts("Rustic", "Modern"), "Color": _opts("Dark Red", "Black")}, ["Steel legs"], "A desk."),
]
FUZZ_ATTRS = {
    "B0MAT00001": {"attributes": ["easy_clean", "non slip"], "instruction": "i need an easy clean kitchen mat",
                   "instruction_attributes": ["easy clean", "non slip"]},
    "B0TEE00001": {"attributes": ["soft"], "instruction": "i want a soft cotton tee", "instruction_attributes": ["soft"]},
    "B0ART00001": {"attributes": ["naive", "framed"], "instruction": "i want a naïve framed art print",
                   "instruction_attributes": ["naïve", "framed"]},
    "B0DESK0001": {"attributes": ["sturdy"]},
}
FUZZ_HUMAN = {
    "B0TEE00001": [{"instruction": "I want a small soft tee.", "instruction_attributes": ["soft"], "instruction_options": ["Ｓmall"]},
                   {"instruction": "A soft tee, xxlarge", "instruction_attributes": ["soft"], "instruction_options": ["xxlarge"]}],
    "B0DESK0001": [{"instruction": "A rustic desk in dark red.", "instruction_attributes": ["sturdy"],
                    "instruction_options": ["Rustic", "Dark red"]},
                   {"instruction": "A rustic desk in black.", "instruction_attributes": ["sturdy"],
                    "instruction_options": ["rustic", "Black"]}],
}


@pytest.fixture
def fuzz_data(tmp_path):
    return write(tmp_path / "data", FUZZ_PRODUCTS, FUZZ_ATTRS, FUZZ_HUMAN)


def _buy(suite, task, clicks):
    """Play the pages: search the target's title, open it, click option values as the page shows them, buy."""
    env = suite.new_env()
    env.reset(task)
    env.step(f"search[{task.name}]")
    assert env.step(f"click[{task.asin.lower()}]")[3]["action_admissible"]
    for c in clicks:
        assert env.step(f"click[{c}]")[3]["action_admissible"], c
    obs, r, done, info = env.step("click[buy now]")
    assert done and info["score"] == r
    return r


def test_reward_underscores_non_ascii_and_null_texts(fuzz_data):
    """Attributes through thefuzz 0.19: the goal's "easy clean" misses the product's "easy_clean" (50, an underscore
    is a word character), so the target of that goal earns (1 + 0 + 1) / (2 + 0 + 1); "naïve" matches "naive" (89:
    the ï is dropped), so the print's goal pays 1.0. The mat's null description and features score as empty text
    where goal.py's substring fallback would raise (departure 6)."""
    suite = envs.make("shop", "eval_unseen", data=str(fuzz_data))
    mat = next(t for t in suite.tasks if t.asin == "B0MAT00001")
    assert _buy(suite, mat, []) == pytest.approx(2 / 3)
    art = next(t for t in suite.tasks if t.asin == "B0ART00001")
    assert _buy(suite, art, []) == 1.0


def test_reward_escaped_whitespace_in_synthetic_goal_options(fuzz_data):
    """The tee's stored option values hold no-break spaces and a tab; pages and click[...] show them collapsed
    ("navy blue", "x large", "xx large"), the goal text too, but the reward reads them as stored: a synthetic
    goal's (type, value) pair reaches thefuzz as its repr, so ("color", "navy\\xa0blue") misses the bought
    "navy\\xa0blue" (-> "blue", 36), ("size", "x\\tlarge") misses the bought "x\\tlarge" (70) and ("size",
    "xx\\xa0large") the bought "xxlarge" (the no-break space dropped: M 6, T 23 -> 52). R = (n_attr + n_opt + 1) /
    (1 + 2 + 1) with n_attr = 1: 0.5 with both values escaped, 0.75 with one, 1.0 with neither."""
    suite = envs.make("shop", "eval_unseen", data=str(fuzz_data))
    tees = {t.goal_options: t for t in suite.tasks if t.asin == "B0TEE00001"}
    assert sorted(tees) == sorted(itertools.product([("color", "navy\xa0blue"), ("color", "olive")],
                                                   [("size", "x\tlarge"), ("size", "small"), ("size", "xx\xa0large")]))
    want = {("navy\xa0blue", "x\tlarge"): 0.5, ("navy\xa0blue", "small"): 0.75, ("navy\xa0blue", "xx\xa0large"): 0.5,
            ("olive", "x\tlarge"): 0.75, ("olive", "small"): 1.0, ("olive", "xx\xa0large"): 0.75}
    for pairs, task in tees.items():
        shown = [" ".join(v.split()) for _, v in pairs]
        assert task.options == tuple(zip(("color", "size"), shown)) and task.pair_options
        assert " with color: " + shown[0] + ", and size: " + shown[1] + ", and price" in task.instruction
        assert _buy(suite, task, shown) == want[tuple(v for _, v in pairs)], pairs


def test_reward_human_goal_options_as_written(fuzz_data):
    """Human goals keep the crowd's strings for the reward; normalize_color is case-sensitive and thefuzz keeps
    fullwidth letters: "Rustic" misses the bought "rustic" (-> "rust", 80) and "Dark red" (-> "red") misses the
    bought "dark red" (-> "dark", 29), so that desk goal earns (1 + 0 + 1) / (1 + 2 + 1) = 0.5, while "rustic" and
    "Black" both match (1.0); "Ｓmall" misses the bought "small" (80): (1 + 0 + 1) / (1 + 1 + 1). The bought
    option is read as stored: "xxlarge" matches the shown "xx large" whose stored "xx\\xa0large" thefuzz reads as
    "xxlarge" (1.0; the shown value would score "large xx" vs "xxlarge": M 5, T 15 -> 67, a miss). The expert
    still gets the values typed on the product."""
    suite = envs.make("shop", "eval_unseen", data=str(fuzz_data), human_goals=True)
    by = {t.goal_options: t for t in suite.tasks}
    assert sorted(by) == sorted([("Ｓmall",), ("xxlarge",), ("Rustic", "Dark red"), ("rustic", "Black")])
    red, black = by[("Rustic", "Dark red")], by[("rustic", "Black")]
    assert red.options == (("style", "rustic"), ("color", "dark red")) and not red.pair_options
    assert _buy(suite, red, ["rustic", "dark red"]) == 0.5
    assert _buy(suite, black, ["rustic", "black"]) == 1.0
    assert _buy(suite, by[("Ｓmall",)], ["olive", "small"]) == pytest.approx(2 / 3)
    assert _buy(suite, by[("xxlarge",)], ["xx large"]) == 1.0


# -----------------------------------------------------------------------------
# errors


def _set(i, **kw):
    return [dict(r, **kw) if j == i else r for j, r in enumerate(PRODUCTS)]


def _drop(i, key):
    return [{k: v for k, v in r.items() if k != key} if j == i else r for j, r in enumerate(PRODUCTS)]


@pytest.mark.parametrize("files,kw,message", [
    (dict(products=None), {}, r"items_shuffle_1000\.json: no such file \(expected a JSON list of product records"),
    (dict(attrs=None), {}, r"items_ins_v2_1000\.json: no such file \(expected a JSON object mapping asin"),
    ({}, dict(full=True), r"items_shuffle\.json: no such file"),
    (dict(human=None), dict(human_goals=True), r"items_human_ins\.json: no such file"),
    (dict(products="[{"), {}, r"items_shuffle_1000\.json: not valid JSON \(.*\); expected a JSON list"),
    (dict(products={"B07LOTION1": {}}), {}, r"items_shuffle_1000\.json: expected a JSON list of product records, found an object"),
    (dict(products=json.dumps(PRODUCTS)[:300]), {}, r"items_shuffle_1000\.json: not valid JSON \(Unterminated string .*\); expected a JSON list"),
    (dict(attrs=json.dumps(ATTRS)[:-1]), {}, r"items_ins_v2_1000\.json: not valid JSON \(.*\); expected a JSON object mapping asin"),
    (dict(human=json.dumps(HUMAN)[:120]), dict(human_goals=True), r"items_human_ins\.json: not valid JSON \(.*\); expected a JSON object"),
    (dict(attrs=[ATTRS]), {}, r"items_ins_v2_1000\.json: expected a JSON object mapping asin .*, found a list"),
    (dict(human=[HUMAN]), dict(human_goals=True), r"items_human_ins\.json: expected a JSON object mapping asin .*, found a list"),
    (dict(products=["B07LOTION1"]), {}, r"items_shuffle_1000\.json: product 0: expected a product object, found a string"),
    (dict(products=_drop(0, "asin")), {}, r"product 0: expected 'asin' to be a string, found nothing"),
    (dict(products=_drop(2, "query")), {}, r"product 2 \(B09SNEAKR1\): expected 'query' to be a string, found nothing"),
    (dict(products=_set(3, category=None)), {}, r"product 3 \(B07PILLOW1\): expected 'category' to be a string, found null"),
    (dict(products=_set(0, small_description=["ok", 2])), {}, r"expected 'small_description' to be a list of strings, found a list holding a number"),
    (dict(attrs={**ATTRS, "B07LOTION1": dict(ATTRS["B07LOTION1"], attributes=None)}), {},
     r"items_ins_v2_1000\.json: B07LOTION1: expected 'attributes' to be a list of strings, found null"),
    (dict(attrs={**ATTRS, "B07LOTION1": ["dry skin"]}), {}, r"items_ins_v2_1000\.json: B07LOTION1: expected an object .*, found a list"),
    (dict(human={"B07LOTION1": {"instruction": "x"}}), dict(human_goals=True), r"items_human_ins\.json: B07LOTION1: expected a list of instruction objects"),
    (dict(products=_drop(1, "name")), {}, r"product 1 \(B08TSHIRT1\): expected 'name' to be a string, found nothing"),
    (dict(products=_set(0, pricing="twelve dollars")), {}, r"product 0 \(B07LOTION1\): expected 'pricing' like '\$12\.99'"),
    (dict(products=_set(0, customization_options={"Size": ["8 fl oz"]})), {}, r"expected customization option 'Size' to be a list"),
    (dict(products=[dict(r, asin="nan") for r in PRODUCTS]), {}, r"no usable product"),
    (dict(attrs={**ATTRS, "B07LOTION1": {"instruction": "i need lotion"}}), {},
     r"items_ins_v2_1000\.json: B07LOTION1: expected 'instruction_attributes' to be a list of strings"),
    (dict(attrs={k: {"attributes": v["attributes"]} for k, v in ATTRS.items()}), {}, r"no goal: items_ins_v2_1000\.json"),
    (dict(human={"B07LOTION1": [{"instruction": "x", "instruction_attributes": ["a"]}]}), dict(human_goals=True),
     r"items_human_ins\.json: B07LOTION1 instruction 0: expected 'instruction_options' to be a list of strings"),
])
def test_errors_name_the_file_and_what_was_expected(tmp_path, files, kw, message):
    """Missing directory or file and malformed records raise WebShopDataError at make(): one line naming the file
    (and record) and what was expected."""
    d = write(tmp_path / "data", **{**dict(products=PRODUCTS, attrs=ATTRS, human=HUMAN), **files})
    with pytest.raises(W.WebShopDataError, match=message) as e:
        envs.make("shop", "eval_unseen", data=str(d), **kw)
    assert "\n" not in str(e.value)
    with pytest.raises(W.WebShopDataError, match=r"nope: no such directory \(expected WebShop's data/ folder"):
        envs.make("shop", "train", data=str(tmp_path / "nope"))


def test_data_paths_that_are_not_what_they_should_be(tmp_path):
    """A data path that is a file, and a data file that is a directory, are named with what they are."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(W.WebShopDataError, match=r"file: not a directory \(expected WebShop's data/ folder"):
        envs.make("shop", "train", data=str(tmp_path / "file"))
    d = write(tmp_path / "data", products=None)
    (d / W.FILES[False][0]).mkdir()
    with pytest.raises(W.WebShopDataError, match=r"items_shuffle_1000\.json: not a file \(expected a JSON list"):
        envs.make("shop", "train", data=str(d))
