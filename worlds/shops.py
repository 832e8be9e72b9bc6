"""The generated shops of the WebShop world (worlds/webshop.py): product categories, products, the
search engine's ranking, WebShop's reward, and the tasks (an instruction and its own small shop).
"""

import random
import re

PAGE_SIZE = 3  # ReAct's/Reflexion's text env shows only the first 3 products of a results page

_COLORS = ("black", "white", "navy", "red", "grey", "pink", "green", "beige", "blue", "purple")
_SIZES = ("small", "medium", "large", "x-large", "xx-large")
_OUNCES = ("8 ounce", "12 ounce", "16 ounce", "24 ounce", "32 ounce")
# (product type, 6 attributes, option type -> values, price range in dollars)
CATEGORIES = (
    ("shower cap", ("waterproof", "reusable", "clear", "long", "elastic", "quick-dry"),
     {"color": _COLORS}, (5, 25)),
    ("deodorant", ("aluminum-free", "natural", "unscented", "vegan", "sensitive", "travel-size"),
     {"scent": ("citrus", "lavender", "ginger", "coconut", "vanilla"),
      "size": ("2 ounce", "3 ounce", "2 pack")}, (6, 30)),
    ("shampoo", ("sulfate-free", "organic", "paraben-free", "moisturizing", "volumizing", "vegan"),
     {"size": _OUNCES}, (8, 40)),
    ("hair dryer", ("ionic", "lightweight", "foldable", "quiet", "ceramic", "fast-drying"),
     {"color": _COLORS}, (20, 90)),
    ("running shoes", ("lightweight", "breathable", "non-slip", "cushioned", "waterproof", "wide"),
     {"size": ("7", "7.5", "8", "8.5", "9", "9.5", "10", "11"), "color": _COLORS}, (30, 120)),
    ("t-shirt", ("cotton", "slim-fit", "short-sleeve", "v-neck", "moisture-wicking", "crew-neck"),
     {"size": _SIZES, "color": _COLORS}, (8, 35)),
    ("hoodie", ("fleece", "zip-up", "oversized", "pullover", "cotton", "lightweight"),
     {"size": _SIZES, "color": _COLORS}, (20, 60)),
    ("socks", ("cotton", "cushioned", "moisture-wicking", "no-show", "athletic", "compression"),
     {"size": ("small", "medium", "large"), "color": _COLORS}, (8, 30)),
    ("coffee mug", ("ceramic", "insulated", "dishwasher-safe", "microwave-safe", "stainless", "leak-proof"),
     {"size": _OUNCES[:3], "color": _COLORS}, (8, 35)),
    ("water bottle", ("bpa-free", "insulated", "stainless", "leak-proof", "lightweight", "collapsible"),
     {"size": _OUNCES[2:], "color": _COLORS}, (10, 45)),
    ("desk lamp", ("dimmable", "led", "usb", "rechargeable", "touch-control", "eye-caring"),
     {"color": _COLORS}, (15, 70)),
    ("bed sheets", ("microfiber", "deep-pocket", "cooling", "breathable", "wrinkle-free", "cotton"),
     {"size": ("twin", "full", "queen", "king"), "color": _COLORS}, (20, 90)),
    ("candle", ("soy", "scented", "long-lasting", "natural", "lead-free", "handmade"),
     {"scent": ("citrus", "lavender", "vanilla", "cedar", "rose")}, (8, 40)),
    ("phone case", ("shockproof", "slim", "clear", "magnetic", "glitter", "rugged"),
     {"model": ("iphone 13", "iphone 14", "iphone 15", "galaxy s23", "pixel 8"), "color": _COLORS},
     (6, 30)),
    ("wireless earbuds", ("noise-cancelling", "waterproof", "bluetooth", "rechargeable", "sports", "compact"),
     {"color": _COLORS}, (20, 150)),
    ("backpack", ("waterproof", "lightweight", "anti-theft", "laptop", "usb", "travel"),
     {"color": _COLORS}, (20, 80)),
    ("yoga mat", ("non-slip", "thick", "eco-friendly", "foldable", "extra-large", "lightweight"),
     {"size": ("4mm", "6mm", "8mm"), "color": _COLORS}, (15, 60)),
    ("dog leash", ("reflective", "retractable", "padded", "heavy-duty", "nylon", "hands-free"),
     {"size": ("small", "medium", "large"), "color": _COLORS}, (8, 40)),
)
_TAILS = ("for Women", "for Men", "Unisex", "Premium Quality", "Gift Idea", "New Version", "Everyday Use",
             "Classic Edition", "Deluxe", "Original")
_SYLLABLES = ("ka", "lo", "mi", "zen", "vo", "ra", "tu", "be", "qui", "no", "sa", "fi", "dor", "pex")
_LEADS = ("i need", "i am looking for", "i want to buy", "find me", "get me")
_REVIEWS = ("works as described", "good value for the price", "arrived quickly", "would buy again")


def tokenize(text: str) -> list[str]:
    """Lower-cased words, inner hyphens and dots kept ('non-slip', '8.5')."""
    return re.findall(r"[a-z0-9]+(?:[-.][a-z0-9]+)*", text.lower())


def _product(rng, category, attrs, options, price, boost, used) -> dict:
    """A product of `category`; `boost` repeats the type in the title (keyword stuffing ranks it higher)."""
    ctype = category[0]
    asin = None
    while asin is None or asin in used:  # a fresh id, unique within the shop
        asin = "B0" + "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=8))
    used.add(asin)
    brand = (rng.choice(_SYLLABLES) + rng.choice(_SYLLABLES)).title()
    words = " ".join(a.title() for a in rng.sample(list(attrs), len(attrs)))
    tail = f", {ctype.title()} {rng.choice(_TAILS)}" if boost else f" {rng.choice(_TAILS)}"
    title = f"{brand} {words} {ctype.title()}{tail}"
    tf = {}
    for t in tokenize(title):
        tf[t] = tf.get(t, 0) + 1
    return {"asin": asin, "type": ctype, "brand": brand, "attrs": tuple(attrs), "options": options,
            "price": round(price, 2), "title": title, "tf": tf, "rating": rng.choice(("N.A.", "4.0", "4.5")),
            "review": rng.choice(_REVIEWS)}


def search(shop: list, query: str) -> list:
    """Rank by term overlap, each query term counting up to twice per title; ties keep listing order."""
    q = set(tokenize(query))
    scored = [(-sum(min(p["tf"].get(t, 0), 2) for t in q), j, p) for j, p in enumerate(shop)]
    return [p for s, _, p in sorted(scored, key=lambda x: x[:2]) if s < 0]


def purchase_reward(product: dict, goal: dict, chosen: dict) -> tuple[float, dict]:
    """WebShop's get_reward (princeton-nlp/WebShop, web_agent_site/engine/goal.py): r = r_type *
    (|attributes matched| + |options matched| + [price <= budget]) / (|attributes| + |options| + 1)."""
    # r_type: WebShop matches the query / >= 2 category levels, else the share of the goal name's nouns
    # (spaCy) in the bought name (> 0.2 -> 1, else 0.5; < 0.1 -> 0.1; 0 -> 0). Our products carry their
    # type phrase, so "same type" stands for the query match and its words for the nouns.
    want = tokenize(goal["type"])
    title_score = sum(t in product["tf"] for t in want) / len(want)
    r_type = 1.0 if product["type"] == goal["type"] or title_score > 0.2 else 0.5
    r_type = 0.0 if title_score == 0 else 0.1 if title_score < 0.1 else r_type
    # Attributes: WebShop fuzzy-matches the attribute list, then looks in title/features/description; ours
    # are exact single words, so an exact test on the attribute list and the title does the same.
    n_att = sum(a in product["attrs"] or a in product["tf"] for a in goal["attrs"])
    # Options: WebShop counts bought option values found among the goal's (exact for size, fuzzy token-set
    # ratio > 85 otherwise); no two of our option values are near-duplicates, so we match exactly.
    n_opt = sum(v in goal["options"].values() for v in chosen.values())
    price_ok = product["price"] <= goal["budget"]
    r = r_type * (n_att + n_opt + price_ok) / (len(goal["attrs"]) + len(goal["options"]) + 1)
    return r, {"r_type": r_type, "attributes_matched": n_att, "attributes": len(goal["attrs"]),
               "options_matched": n_opt, "options": len(goal["options"]), "price_ok": price_ok}


def _satisfies(product: dict, goal: dict) -> bool:
    """Buying `product` with the goal's options (where offered) scores 1.0."""
    chosen = {t: v for t, v in goal["options"].items() if v in product["options"].get(t, ())}
    return purchase_reward(product, goal, chosen)[0] == 1.0


def unoffered(product: dict, values) -> str | None:
    """The first of `values` that `product` offers under no option type, or None if it offers them all."""
    offered = {v for vals in product["options"].values() for v in vals}
    return next((v for v in values if v not in offered), None)


def _make_task(rng, category, want, trap) -> dict:
    """One instruction and its shop: the target, three near misses, same-type fillers and strangers.

    `trap` (None, "attribute", "price" or "option") names the near miss that tops the search results for
    the instruction's product phrase; with None the target tops them.
    """
    want = rng.sample(want, len(want))
    others = [a for a in category[1] if a not in want]
    goal, price = _draw_goal(rng, category, want, trap)
    for _ in range(50):  # the construction below meets the checks; retry defends against a bad draw
        used = set()
        target = _product(rng, category, want + [rng.choice(others)], _options(rng, category, goal), price,
                          trap is None, used)
        decoys = _near_misses(rng, category, goal, want, others, used)
        fillers = _fillers(rng, category, want, others, used)
        top = decoys[trap] if trap else target
        rest = [target, *decoys.values(), *fillers]
        rest.remove(top)
        shop = [top] + rng.sample(rest, len(rest))
        ranked = search(shop, goal["phrase"])
        if (ranked[0] is top and _satisfies(top, goal) == (trap is None)
                and ranked.index(target) < 4 * PAGE_SIZE and _satisfies(target, goal)):
            return {**goal, "target": target["asin"], "shop": shop, "by_asin": {p["asin"]: p for p in shop}}
    raise RuntimeError(f"webshop: could not build a shop for {goal['text']!r}")


def _draw_goal(rng, category, want, trap) -> tuple[dict, float]:
    """The instruction's goal (wanted attributes in `want`'s order, options, budget, text) and the
    target's price."""
    ctype, _, opt_pools, (lo, hi) = category
    goal_opts = {t: rng.choice(vals) for t, vals in opt_pools.items()}
    price = rng.randint(lo, hi) - 0.01
    # WebShop's get_human_goals: budget = larger of 2 draws from the 4 multiples of 10 above the price
    budget = float(max(rng.sample([p for p in range(10, 1000, 10) if p > price][:4], 2)))
    phrase = " ".join(want + [ctype])
    opts_text = ", and ".join(f"{t}: {v}" for t, v in goal_opts.items())
    text = f"{rng.choice(_LEADS)} {phrase} with {opts_text}, and price lower than {budget:.2f} dollars"
    goal = {"type": ctype, "attrs": tuple(want), "options": goal_opts, "budget": budget, "phrase": phrase,
            "text": text, "trap": trap}
    return goal, price


def _options(rng, category, goal, missing=None) -> dict:
    """Offered values per option type, the goal's one among them but for option type `missing`."""
    out = {}
    for t, vals in category[2].items():
        rest = [v for v in vals if v != goal["options"][t]]
        k = rng.randint(2, min(4, len(rest)))
        out[t] = rng.sample(rest, k) if t == missing else rng.sample(rest, k - 1)
        if t != missing:
            out[t].insert(rng.randrange(k), goal["options"][t])
    return out


def _cheap(rng, category, goal) -> float:
    """A price within the budget."""
    return rng.randint(category[3][0], int(goal["budget"]) - 1) + 0.99


def _near_misses(rng, category, goal, want, others, used) -> dict:
    """The products that miss the goal by one thing: a wanted attribute, the budget, an option."""
    trap, opt_pools = goal["trap"], category[2]
    return {
        "attribute": _product(rng, category, [rng.choice(want)] + rng.sample(others, 2),
                              _options(rng, category, goal), _cheap(rng, category, goal),
                              trap == "attribute", used),
        "price": _product(rng, category, want + [rng.choice(others)], _options(rng, category, goal),
                          goal["budget"] + rng.randint(0, 14) + 0.99, trap == "price", used),
        "option": _product(rng, category, want + [rng.choice(others)],
                           _options(rng, category, goal, rng.choice(list(opt_pools))),
                           _cheap(rng, category, goal), trap == "option", used),
    }


def _fillers(rng, category, want, others, used) -> list:
    """3-5 products of the same type that match the goal less, then some of 2-3 other categories."""
    ctype, _, opt_pools, (lo, hi) = category
    fillers = []
    for _ in range(rng.randint(3, 5)):
        a = rng.sample(others, 3) if rng.random() < 0.5 else rng.sample(others, 2) + [rng.choice(want)]
        opts = {t: rng.sample(v, rng.randint(2, min(4, len(v)))) for t, v in opt_pools.items()}
        fillers.append(_product(rng, category, a, opts, rng.randint(lo, hi) - 0.01, rng.random() < 0.3, used))
    for cat in rng.sample([c for c in CATEGORIES if c[0] != ctype], rng.randint(2, 3)):
        opts = {t: rng.sample(v, rng.randint(2, min(4, len(v)))) for t, v in cat[2].items()}
        fillers.append(_product(rng, cat, rng.sample(cat[1], 3), opts, rng.randint(*cat[3]) - 0.01, False,
                                used))
    return fillers


def make_tasks(split: str, seed: int, n_tasks: int, difficulty: float) -> list:
    """The split's tasks: round(difficulty * n_tasks) of them, spread at random, have a near miss on top
    of the search results (a missing attribute, price or option, a third each); the others the target."""
    # Disjoint by construction: each (type, pair of wanted attributes) belongs to one split only, so no
    # test instruction's product phrase occurs in training.
    combos = [(c, (a, b)) for c in range(len(CATEGORIES)) for a in range(6) for b in range(a + 1, 6)]
    random.Random(f"webshop/{seed}/combos").shuffle(combos)
    pool = combos[: len(combos) // 2] if split == "train" else combos[len(combos) // 2:]
    rng = random.Random(f"webshop/{seed}/{split}")
    rng.shuffle(pool)
    n_trap = round(difficulty * n_tasks)
    traps = [("attribute", "price", "option")[j % 3] for j in range(n_trap)] + [None] * (n_tasks - n_trap)
    rng.shuffle(traps)
    tasks = []
    for i in range(n_tasks):
        c, (a, b) = pool[i % len(pool)]
        cat = CATEGORIES[c]
        tasks.append(_make_task(random.Random(f"webshop/{seed}/{split}/{i}"), cat, [cat[1][a], cat[1][b]],
                                traps[i]))
    return tasks
