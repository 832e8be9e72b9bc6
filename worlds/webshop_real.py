"""The real WebShop (Yao et al., 2022): its Flask site, driven over HTTP as ReAct and Reflexion drove it,
behind the env contract of envs.py.

`envs.make("webshop", split, source="http://HOST:3000")` plays goal `fixed_<k>` of a running
web_agent_site server: test is goals 0..499 (ReAct's 500; Reflexion ran the first 100), train is goals
1500 on (WebShop's own split; 500..1499 is its dev set). Pages are read as ReAct's `webshop_text` reads
them: the visible text, buttons as [Back to Search], options as [x] ([[x]] once clicked), the first 3
products of a result page, and the score of the done page, which the server computes with WebShop's
reward (type match x the share of attributes, options and price met). The actions are ReAct's:
search[...] (from the start page only), click[...] on a button, product or option, think[...]; an
action the page does not offer answers "Invalid action!". An episode ends at click[Buy Now] or after
`max_steps` (15) actions; the return is the score, success is a score of 1.0, as Reflexion counts it.

Unlike ReAct's notebook, the path segments are percent-quoted: ReAct sent '#' and '?' raw, so an option
such as "natural black #1b" cut the URL and the purchase scored 0.
"""

import html.parser
import urllib.parse

import requests

from infra import http
from worlds.episodes import check_step

SPLITS = {"test": (0, 500), "train": (1500, 12087)}  # goal ids; 12,087 human goals on the full data
BUTTONS = ("Back to Search", "< Prev", "Next >", "Buy Now", "Description", "Features", "Reviews",
           "Attributes")  # fmt: skip
SUB_PAGES = ("Description", "Features", "Reviews", "Attributes")
SCORE = "Your score (min 0.0, max 1.0)"
_HIDDEN = {"style", "script", "head", "title", "meta"}
_VOID = {"br", "img", "input", "meta", "link", "hr", "area", "base", "col", "embed", "source", "wbr"}


class _Texts(html.parser.HTMLParser):
    """The visible text nodes of a page, each with its parent tag and class (BeautifulSoup's
    findAll(text=True) filtered as ReAct's tag_visible); comments are skipped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.texts = [], []  # stack: (tag, class); texts: (text, parent tag, parent class)

    def handle_starttag(self, tag, attrs):
        if tag not in _VOID:
            self.stack.append((tag, dict(attrs).get("class") or ""))

    def handle_endtag(self, tag):
        for k in range(len(self.stack) - 1, -1, -1):  # WebShop's templates close <h4> with </h5>
            if self.stack[k][0] == tag:
                del self.stack[k:]
                return

    def handle_data(self, data):
        if data.strip() and not any(t in _HIDDEN for t, _ in self.stack):
            tag, cls = self.stack[-1] if self.stack else ("[document]", "")
            self.texts.append((data.strip(), tag, cls))


def page_text(page: str, kind: str, url: str) -> tuple[str, dict]:
    """(observation, info) of a page as ReAct's webshop_text makes them: info has "asins" (every product
    of a result page), "options" ({value: option name}) and "reward" (the done page's score)."""
    parser = _Texts()
    parser.feed(page)
    texts, obs, info = parser.texts, "", {"asins": [], "options": {}}
    regular, n_products, since_product, option_type = 0, 0, 0, None
    for k, (t, tag, cls) in enumerate(texts):
        if t == SCORE and k + 1 < len(texts):
            info["reward"] = float(texts[k + 1][0])
            return f"{SCORE}: {texts[k + 1][0]}", info
        if tag == "button":
            obs += f"\n[{t}] "
        elif tag == "label":
            obs += f"[[{t}]]" if f"'{t}'" in url else f"[{t}]"
            info["options"][t] = option_type
        elif cls == "product-link":
            obs += f"\n[{t}] " if n_products < 3 else ""
            n_products, since_product = n_products + 1, 0
            info["asins"].append(t)
        else:  # the first two regular texts of a page after the first: "Instruction:" and the instruction
            hide = (regular < 2 and kind != "init") or (since_product <= 2 and n_products >= 4)
            obs += "" if hide else f"\n{t} "
            option_type, regular = t, regular + 1
        since_product += 1
    return obs, info


class RealWebShopEnv:
    """WebShop's goals on its site at `source`. Options: `n_tasks` (the first n goals of the split),
    `max_steps` (15), `timeout` (seconds a request), `retries` / `backoff` (as infra/http.py)."""

    name = "webshop"

    def __init__(self, split="train", seed=0, source=None, n_tasks=None, max_steps=15, timeout=10.0,
                 retries=3, backoff=0.5):  # fmt: skip
        if not (isinstance(source, str) and source.startswith(("http://", "https://"))):
            raise ValueError(f"webshop source must be None (generated) or the http(s):// URL of a WebShop "
                             f"server (web_agent_site), got {source!r}")  # fmt: skip
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
        if not (isinstance(max_steps, int) and max_steps > 0):
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        first, end = SPLITS[split]
        if n_tasks is not None and not (isinstance(n_tasks, int) and 0 < n_tasks):
            raise ValueError(f"n_tasks must be a positive int or None, got {n_tasks!r}")
        self.url, self.max_steps, self.timeout, self.retries, self.backoff = source.rstrip("/"), max_steps, \
            timeout, retries, backoff  # fmt: skip
        self.goals = list(range(first, end if n_tasks is None else min(end, first + n_tasks)))
        self.check()
        self._session, self._done = None, False

    def __len__(self):
        return len(self.goals)

    def check(self):
        """Fail at start-up, naming the URL, when no WebShop site answers there."""
        page = self._get(f"fixed_{self.goals[0]}")
        if 'id="instruction-text"' not in page:
            raise http.ServiceError(f"{self.url}/fixed_{self.goals[0]} is not a WebShop start page (no "
                                    f"instruction-text): is source the web_agent_site server?")  # fmt: skip

    def reset(self, i):
        if not (isinstance(i, int) and 0 <= i < len(self.goals)):
            raise IndexError(f"task index {i!r} out of range for the {len(self.goals)} goals of this split")
        self._session, self._steps, self._done = f"fixed_{self.goals[i]}", 0, False
        self._state = {"kind": "init"}
        obs, self._info = self._page()
        return obs

    def step(self, action):
        check_step(self._session is not None, self._done, action)
        self._steps += 1
        action, reward = action.strip(), 0.0
        if action.startswith("think[") and action.endswith("]"):
            obs = "OK."
        else:
            state = self._next_state(action)
            if state is None:
                obs = "Invalid action!"
            else:
                self._state = state
                obs, self._info = self._page()
                if state["kind"] == "end":
                    reward, self._done = self._info.get("reward", 0.0), True
                elif state.pop("clicked", None):
                    obs = f"You have clicked {action[6:-1]}."
        self._done = self._done or self._steps >= self.max_steps
        return obs, reward, self._done, {"success": reward == 1.0, "steps": self._steps}

    def _next_state(self, action):
        """The page state after `action` (ReAct's state machine), or None when the page does not offer it."""
        s, kind = self._state, self._state["kind"]
        if action.startswith("search[") and action.endswith("]") and kind == "init":
            return {"kind": "search", "query": action[7:-1]}
        if not (action.startswith("click[") and action.endswith("]")):
            return None
        button = action[6:-1]
        if button == "Buy Now" and kind == "item":
            return {**s, "kind": "end"}
        if button == "Back to Search" and kind in ("search", "item", "item_sub"):
            return {"kind": "init"}
        if button == "< Prev" and kind in ("item", "item_sub"):  # Next > is off: ReAct's one result page
            return {**s, "kind": "item"} if kind == "item_sub" else {"kind": "search", "query": s["query"]}
        if button in SUB_PAGES and kind == "item":
            return {**s, "kind": "item_sub", "sub": button}
        if kind == "search" and button in self._info["asins"]:
            return {**s, "kind": "item", "asin": button, "options": {}}
        if kind == "item" and button in self._info["options"]:
            return {**s, "options": {**s["options"], self._info["options"][button]: button}, "clicked": True}
        return None

    def _page(self):
        s, q = self._state, urllib.parse.quote
        seg = lambda x: q(str(x), safe="")  # noqa: E731
        kind, sid = s["kind"], self._session
        query = seg(s.get("query", "").replace("/", " "))  # a '/' cannot be in a path segment
        opts = seg(repr(s.get("options", {})))  # the site reads a Python dict literal (ast.literal_eval)
        path = {"init": f"{sid}", "search": f"search_results/{sid}/{query}/1",
                "item": f"item_page/{sid}/{seg(s.get('asin'))}/{query}/1/{opts}",
                "item_sub": f"item_sub_page/{sid}/{seg(s.get('asin'))}/{query}/1/{seg(s.get('sub'))}/{opts}",
                "end": f"done/{sid}/{seg(s.get('asin'))}/{opts}"}[kind]  # fmt: skip
        url = f"{self.url}/{path}"
        return page_text(self._get(path), kind, urllib.parse.unquote(url))

    def _get(self, path: str) -> str:
        url = f"{self.url}/{path}"
        send = lambda: requests.get(url, timeout=self.timeout)  # noqa: E731
        return http.request(send, lambda r: r.text, lambda r: http.ServiceError(
            f"WebShop {url} answered HTTP {r.status_code}: {http.error_message(r)}"), f"WebShop {url}",
            self.retries, self.backoff, 30.0)  # fmt: skip
