"""The WebShop world: WebShop (Yao et al., 2022) in the text mode that ReAct, Reflexion and Retroformer
drive: read the instruction, search[...], click[...] a result, its options and Buy Now; scored by
WebShop's get_reward. Each task has its own small generated shop (worlds/shops.py: one category's
products and a few from other categories), so whether the top search result satisfies the instruction
is set by construction (`difficulty`).
"""

import random
import re

from worlds import shops
from worlds.episodes import episode_steps, render_trajectory

MAX_STEPS = 15  # Reflexion's webshop_trial.py runs `for i in range(15)`; Retroformer reuses it
EXPLORER_SLIP = 0.1  # chance the memoryless explorer takes an option's first value, not the asked one

# A plan names the item to open; the options to click and the budget are the instruction's (the actor
# reads those itself), so the plan's one decision is the retrospector's: the same item again (only its
# options were wrong) or another one (the item itself was wrong).
PLAN_END = ", click the instruction's options, click[Buy Now]."
PLAN_RE = re.compile(
    r"Next time: (?P<open>open (?:(?P<asin>B0[A-Z0-9]{8})|the first result that fits the instruction"
    r"(?:, not (?P<skip>B0[A-Z0-9]{8}))?))[,.]")


def _parse_item(obs: str) -> dict | None:
    """Title, price and options of an item page observation; None for any other page."""
    lines = obs.split("\n")
    if lines[:2] != ["[Back to Search]", "[< Prev]"] or "[Buy Now]" not in lines:
        return None
    options, j = {}, 2
    while m := re.fullmatch(r"(\w+) ((?:\[\[?[^\]]+\]\]?)+)", lines[j]):
        options[m.group(1)] = re.findall(r"\[\[?([^\]]+)\]?\]", m.group(2))
        j += 1
    price = re.fullmatch(r"Price: \$([\d.]+)", lines[j + 1])
    return {"title": lines[j], "price": float(price.group(1)) if price else None, "options": options}


class WebShopEnv:
    """WebShop-style shopping: generated shops, WebShop's text pages, action language and reward.

    Options: `n_tasks` per split (default 100); `difficulty` in [0, 1] (default 0.5): the share of tasks
    whose top search result for the instruction's product phrase is a near miss (lacks a wanted attribute,
    costs more than the budget, or does not offer a wanted option), so buying it as is fails.
    """

    name = "webshop"
    max_steps = MAX_STEPS

    def __init__(self, split: str = "train", seed: int = 0, n_tasks: int = 100, difficulty: float = 0.5):
        if split not in ("train", "test"):
            raise ValueError(f"webshop: unknown split {split!r}: expected 'train' or 'test'")
        if not isinstance(n_tasks, int) or n_tasks < 1:
            raise ValueError(f"webshop: n_tasks must be a positive int, got {n_tasks!r}")
        if not isinstance(difficulty, (int, float)) or not 0 <= difficulty <= 1:
            raise ValueError(f"webshop: difficulty must be a number in [0, 1], got {difficulty!r}")
        self.split, self.seed, self.difficulty = split, seed, float(difficulty)
        self.tasks = shops.make_tasks(split, seed, n_tasks, float(difficulty))
        self.task = None
        self.done = True

    def __len__(self) -> int:
        return len(self.tasks)

    def reset(self, i: int) -> str:
        if not isinstance(i, int):
            raise TypeError(f"webshop: task index must be an int, got {type(i).__name__}")
        if not 0 <= i < len(self.tasks):
            raise IndexError(f"webshop: task index {i!r} out of range: the {self.split} split has "
                             f"{len(self.tasks)} tasks")
        self.task, self.done, self.steps = self.tasks[i], False, 0
        self.page, self.page_num, self.results, self.item, self.sub = "search", 1, [], None, None
        self.chosen, self.visited = {}, set()  # options clicked on the open item; items opened this trial
        return self._page_text()

    # --- pages, in the text mode of WebShop's ReAct / Reflexion harness ---
    def _page_text(self) -> str:
        if self.page == "search":
            return f"WebShop\nInstruction:\n{self.task['text']}\n[Search]"
        lines = ["[Back to Search]"]
        if self.page == "results":
            lo = (self.page_num - 1) * shops.PAGE_SIZE
            lines.append(f"Page {self.page_num} (Total results: {len(self.results)})")
            more = lo + shops.PAGE_SIZE < len(self.results)
            lines += ["[< Prev]"] * (self.page_num > 1) + ["[Next >]"] * more
            for p in self.results[lo: lo + shops.PAGE_SIZE]:
                lines += [f"[{p['asin']}]", p["title"], f"${p['price']:.2f}"]
            return "\n".join(lines)
        p = self.item
        lines.append("[< Prev]")
        if self.page == "item":
            for t, vals in p["options"].items():
                shown = (f"[[{v}]]" if self.chosen.get(t) == v else f"[{v}]" for v in vals)  # [[v]]: selected
                lines.append(f"{t} {''.join(shown)}")
            lines += [p["title"], f"Price: ${p['price']:.2f}", f"Rating: {p['rating']}",
                      "[Description]", "[Features]", "[Reviews]", "[Buy Now]"]
        elif self.sub == "Description":
            a = p["attrs"]
            lines.append(f"This {p['type']} by {p['brand']} is {', '.join(a[:-1])} and {a[-1]}.")
        elif self.sub == "Features":
            lines += [f"- {a}" for a in p["attrs"]]
        else:
            lines.append(f"Rating: {p['rating']}. \"{p['review'].capitalize()}.\"")
        return "\n".join(lines)

    def _clickables(self) -> dict:
        """Lower-cased name -> button of everything clickable on the current page."""
        if self.page == "search":
            names = ["Search"]
        elif self.page == "results":
            lo = (self.page_num - 1) * shops.PAGE_SIZE
            names = ["Back to Search"] + ["< Prev"] * (self.page_num > 1)
            names += ["Next >"] * (lo + shops.PAGE_SIZE < len(self.results))
            names += [p["asin"] for p in self.results[lo: lo + shops.PAGE_SIZE]]
        elif self.page == "item":
            names = ["Back to Search", "< Prev", *(v for vals in self.item["options"].values() for v in vals),
                     "Description", "Features", "Reviews", "Buy Now"]
        else:
            names = ["Back to Search", "< Prev"]
        return {n.lower(): n for n in names}

    def step(self, action: str):
        if self.task is None:
            raise RuntimeError("webshop: call reset(i) before step()")
        if self.done:
            raise RuntimeError("webshop: the episode is over (Buy Now or step limit); call reset(i) first")
        if not isinstance(action, str):
            raise TypeError(f"webshop: action must be a str, got {type(action).__name__}")
        self.steps += 1
        obs, reward, info = self._act(action)
        info.setdefault("success", False)
        self.done = "reward_breakdown" in info or self.steps >= self.max_steps
        if self.done and "reward_breakdown" not in info:
            info["truncated"] = True  # step limit without Buy Now: reward 0
        return obs, reward, self.done, info

    def _act(self, action: str) -> tuple[str, float, dict]:
        m = re.fullmatch(r"\s*(search|click|think)\s*\[(.*)\]\s*", action, re.IGNORECASE | re.DOTALL)
        if not m:
            return f"Invalid action! Use search[query] or click[button], not {action.strip()[:50]!r}", 0.0, {}
        verb, arg = m.group(1).lower(), " ".join(m.group(2).split())
        if verb == "think":
            return "OK.", 0.0, {}
        if verb == "search":
            if self.page != "search":
                return "Invalid action! Search is on the search page only; click[Back to Search].", 0.0, {}
            if not arg:
                return "Invalid action! search[] needs a query, e.g. search[red t-shirt].", 0.0, {}
            self.results, self.page, self.page_num = shops.search(self.task["shop"], arg), "results", 1
            return self._page_text(), 0.0, {}
        buttons = self._clickables()
        if self.page == "search":
            return "Invalid action! There is nothing to click here; use search[query].", 0.0, {}
        if arg.lower() not in buttons:
            names = " ".join(f"[{b}]" for b in buttons.values())
            return f"Invalid action! [{arg}] is not on this page. Clickable: {names}", 0.0, {}
        b = buttons[arg.lower()]
        if b == "Back to Search":
            self.page, self.chosen = "search", {}
        elif b == "Next >":
            self.page_num += 1
        elif b == "< Prev" and self.page == "results":
            self.page_num -= 1
        elif b == "< Prev":  # item -> results (forgetting its options), sub page -> item
            self.page, self.chosen = ("results", {}) if self.page == "item" else ("item", self.chosen)
        elif self.page == "results":
            self.page, self.item, self.chosen = "item", self.task["by_asin"][b], {}
            self.visited.add(b)
        elif b in ("Description", "Features", "Reviews"):
            self.page, self.sub = "sub", b
        elif b == "Buy Now":
            r, parts = shops.purchase_reward(self.item, self.task, self.chosen)
            info = {"success": r == 1.0, "reward_breakdown": parts, "asin": self.item["asin"]}
            return f"Your score (min 0.0, max 1.0): {r:.2f}", r, info
        else:  # an option value
            self.chosen[next(t for t, vals in self.item["options"].items() if b in vals)] = b
            return f"You have clicked {b}.", 0.0, {}
        return self._page_text(), 0.0, {}

    # --- scripted policies ---
    def _on_page(self) -> list:
        lo = (self.page_num - 1) * shops.PAGE_SIZE
        return self.results[lo: lo + shops.PAGE_SIZE]

    def _check_live(self):
        if self.task is None or self.done:
            raise RuntimeError("webshop: no episode in progress; call reset(i) first")

    def expert(self) -> tuple[str, str]:
        """Scripted expert: searches the product phrase, pages to the target, sets its options, buys."""
        self._check_live()
        goal, target = self.task, self.task["target"]
        if self.page == "search":
            return f"I need {goal['phrase']}; I will search for it.", f"search[{goal['phrase']}]"
        if self.page == "sub" or (self.page == "item" and self.item["asin"] != target):
            return "This is not the item I want; I go back.", "click[< Prev]"
        if self.page == "results":
            if any(p["asin"] == target for p in self._on_page()):
                return f"{target} matches every requirement; I open it.", f"click[{target}]"
            ranked = [p["asin"] for p in self.results]
            if target not in ranked:
                return "The item I want is not among these results; I search again.", "click[Back to Search]"
            if ranked.index(target) >= self.page_num * shops.PAGE_SIZE:
                return "The item I want is further down; next page.", "click[Next >]"
            return "The item I want is on an earlier page.", "click[< Prev]"
        for t, v in goal["options"].items():
            if self.chosen.get(t) != v:
                return f"The instruction asks for {t}: {v}.", f"click[{v}]"
        return "All options are set and the item matches; I buy it.", "click[Buy Now]"

    def explorer(self, rng: random.Random, plan: str | None = None) -> tuple[str, str]:
        """Memoryless policy: search the instruction's product phrase, open the top result, click the asked
        options (slipping to an option's first value with prob. EXPLORER_SLIP, or when the asked one
        is not offered) and buy. With `plan` (from `plan()`), follow it: search the product phrase, open its
        item or the first result that fits the instruction (its words in the title, its budget; skipping
        the plan's excluded item and items seen this trial to lack an asked option), click the asked
        options (no slips: the plan says to), then Buy Now."""
        self._check_live()
        if plan is not None:
            return self._follow(plan)
        goal = self.task
        if self.page == "search":
            return f"I need {goal['phrase']}; I will search for it.", f"search[{goal['phrase']}]"
        if self.page == "results":
            top = self._on_page()[0]["asin"] if self.results else None
            if top is None:
                return "Nothing found; I go back.", "click[Back to Search]"
            return f"{top} is the top result; I open it.", f"click[{top}]"
        if self.page == "sub":
            return "Back to the item.", "click[< Prev]"
        for t, v in goal["options"].items():
            vals = self.item["options"].get(t)
            if vals and t not in self.chosen:
                if v not in vals:
                    return f"{v} is not offered; I take {vals[0]}.", f"click[{vals[0]}]"
                pick = vals[0] if rng.random() < EXPLORER_SLIP else v
                return f"I choose {pick} for {t}.", f"click[{pick}]"
        return "The item looks right; I buy it.", "click[Buy Now]"

    def _follow(self, plan: str) -> tuple[str, str]:
        m = PLAN_RE.search(plan)
        if not m:
            raise ValueError(f"webshop: cannot parse plan {plan!r}: want 'Next time: open ...'")
        goal = self.task
        asked = list(goal["options"].values())
        if self.page == "search":
            return f"I search for {goal['phrase']} and follow my plan.", f"search[{goal['phrase']}]"
        if self.page == "sub":
            return "Back to the item.", "click[< Prev]"
        if self.page == "results":
            words = set(shops.tokenize(" ".join([*goal["attrs"], goal["type"]])))
            for p in self._on_page():
                lacks = p["asin"] in self.visited and shops.unoffered(p, asked) is not None
                if m.group("asin") == p["asin"] or not m.group("asin") and not lacks and (
                        p["asin"] != m.group("skip") and words <= set(p["tf"])
                        and p["price"] <= goal["budget"]):
                    return f"{p['asin']} fits my plan; I open it.", f"click[{p['asin']}]"
            if "next >" in self._clickables():
                return "Nothing on this page fits my plan; next page.", "click[Next >]"
            fresh = [p["asin"] for p in self._on_page() if p["asin"] not in self.visited]
            if not fresh:
                return "Nothing here fits my plan; I search again.", "click[Back to Search]"
            return f"Nothing fits my plan; I try {fresh[0]}.", f"click[{fresh[0]}]"
        missing = shops.unoffered(self.item, asked)
        if not m.group("asin") and missing is not None:
            return f"{self.item['asin']} has no {missing}; I go back.", "click[< Prev]"
        for t, v in goal["options"].items():  # the asked value of each option type this item offers
            if v in self.item["options"].get(t, ()) and self.chosen.get(t) != v:
                return f"The instruction asks for {t}: {v}.", f"click[{v}]"
        return "Everything in my plan is set; I buy it.", "click[Buy Now]"

    def plan(self, trajectory) -> str | None:
        """Short templated plan for the next trial of the current task, inferred from the failed trajectory's
        observations (the bought item's title, price and options) and the instruction; None if it succeeded
        or is empty."""
        if self.task is None:
            raise RuntimeError("webshop: call reset(i) before plan()")
        goal, page, asin, chosen, bought = self.task, None, None, {}, False
        steps = episode_steps(trajectory)
        for _, action, obs in steps:
            m = re.fullmatch(r"\s*click\s*\[\s*(.*?)\s*\]\s*", action, re.IGNORECASE | re.DOTALL)
            if obs.startswith("Your score (min 0.0, max 1.0): "):
                if float(obs.split(": ")[1]) == 1.0:
                    return None
                bought = True
            elif m and (parsed := _parse_item(obs)) and m.group(1).lower() != "< prev":
                page, asin, chosen = parsed, m.group(1).upper(), {}
            elif m and page and obs.startswith("You have clicked "):
                v = obs[len("You have clicked "): -1]
                chosen.update({t: v for t, vals in page["options"].items() if v in vals})
        if not steps:
            return None
        reasons, product_ok = [], True
        if not bought or page is None:  # no purchase (or its item page is missing from the trajectory)
            reasons.append(f"I did not click[Buy Now] within {self.max_steps} steps")
        else:
            title = set(shops.tokenize(page["title"]))
            lacking = [w for w in goal["attrs"] + tuple(goal["type"].split()) if w not in title]
            unoffered = [v for t, v in goal["options"].items() if v not in page["options"].get(t, ())]
            if lacking:
                reasons.append(f"{asin} lacked {' and '.join(lacking)}")
            if page["price"] is not None and page["price"] > goal["budget"]:
                reasons.append(f"{asin} cost ${page['price']:.2f}, over {goal['budget']:.2f} dollars")
            if unoffered:
                reasons.append(f"{asin} had no {' or '.join(unoffered)}")
            product_ok = not reasons
            for t, v in goal["options"].items():
                if v not in unoffered and chosen.get(t) != v:
                    reasons.append(f"I clicked {chosen[t]}, not {v}" if t in chosen else f"I skipped {v}")
            if not reasons:
                reasons.append(f"{asin} scored below 1")
        # The plan names only what the next trial must do differently, the item: the search (the
        # instruction's phrase), the item's words, budget and options (the instruction's) are the
        # actor's anyway, and a plan with no values to copy is one a small retrospector writes without slips.
        if bought and page is not None and product_ok:
            select = f"open {asin}"
        else:
            select = "open the first result that fits the instruction"
            select += f", not {asin}" if bought and asin else ""
        diagnosis = "; ".join(reasons)
        diagnosis = diagnosis[0].upper() + diagnosis[1:]
        return f"{diagnosis}. Next time: {select}{PLAN_END}"

    def render(self, trajectory, first_obs: str | None = None) -> str:
        """Readable episode: the instruction page (default: the current task's), then each step."""
        if first_obs is None:
            first_obs = f"WebShop\nInstruction:\n{self.task['text']}\n[Search]" if self.task else ""
        return render_trajectory(first_obs, episode_steps(trajectory))


