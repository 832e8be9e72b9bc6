# ruff: noqa: E501  (the stand-in pages keep the markup of WebShop's templates one element a line)
"""The real-WebShop adapter (worlds/webshop_real.py) against a stand-in of WebShop's Flask site
(web_agent_site): the same routes, path encoding (keywords, a Python dict literal of options) and page
markup as its templates (instruction-text, product-link, radio labels, buttons, the done page's score),
serving goals fixed_<k>. WebShop's site is not on the package registry, so it cannot run here."""

import ast
import http.server
import json
import urllib.parse

import pytest

import actor
import envs
import eval as evaluation
import train
from infra import http as retry_http

GOAL = "i need a hair clip in natural black #1b, and price lower than 30.00 dollars"
PRODUCTS = {  # asin: (title, price, {option name: values})
    "B0HAIRCLP1": ("Natural Hair Clip", "$10.99", {"color": ["black", "natural black #1b"], "size": ["small"]}),
    "B0HAIRCLP2": ("Hair Clip Set", "$5.49", {}),
    "B0HAIRCLP3": ("Metal Hair Clip", "$7.00", {}),
    "B0HAIRCLP4": ("Velvet Hair Clip", "$12.00", {}),
    "B0HAIRCLP5": ("Giant Hair Clip", "$31.00", {}),
}
INSTRUCTION = '<div id="instruction-text" class="text-center">\n<h4>Instruction:<br>{}</h4>\n</div>'
BACK = '<form method="post" action="/{sid}"><button type="submit" class="btn btn-success">Back to Search</button></form>'


def goal_of(sid):
    return f"{GOAL} (goal {sid.split('_')[-1]})"


def search_page(sid):
    return f"""<html><head><title>WebShop</title><style>.x{{}}</style></head><body>
<div id="logo" class="text-center"><h2>WebShop</h2></div>
<div id="instruction-text" class="text-center">
<h4>Instruction: <br>{goal_of(sid)}</h4></div>
<form role="form" id="form-buscar" method="post" action="/{sid}">
<input id="search_input" class="form-control" type="text" name="search_query" placeholder="Search..." required/>
<button class="btn btn-success" type="submit"><i class="glyphicon glyphicon-search"></i>Search</button></form>
</body></html>"""


def results_page(sid, keywords):
    items = "".join(f"""<div class="list-group-item">
<h4 class="mt-0 font-weight-bold mb-2 product-asin"><a class="product-link" href="/item_page/{sid}/{a}/x/1/%7B%7D">{a}</a></h5>
<h4 class="mt-0 font-weight-bold mb-2 product-title">{t}</h5>
<h5 class="font-weight-bold my-2 product-price">{p}</h6></div>""" for a, (t, p, _) in PRODUCTS.items())
    return f"""<html><body>{INSTRUCTION.format(goal_of(sid))}{BACK.format(sid=sid)}
<!-- category: beauty; query: {keywords} -->
<h3>Page 1 (Total results: {len(PRODUCTS)})</h3>
<form method="post" action="/search_results/{sid}/x/2"><button type="submit" class="btn btn-primary">Next &gt;</button></form>
{items}</body></html>"""


def item_page(sid, asin, options):
    title, price, opts = PRODUCTS[asin]
    radios = "".join(f"<h4>{name}</h4><div class='radio-toolbar'>" + "".join(
        f'<input type="radio" id="radio_{name}{k}" name="{name}" value="{v}" data-url="/x">'
        f'<label for="radio_{name}{k}">{v}</label>' for k, v in enumerate(values)) + "</div>"
        for name, values in opts.items())  # fmt: skip
    return f"""<html><body>{INSTRUCTION.format(goal_of(sid))}{BACK.format(sid=sid)}
<form method="post" action="/search_results/{sid}/x/1"><button type="submit" class="btn btn-primary">&lt; Prev</button></form>
<img id="product-image" src="x.jpg" class="item-page-img">{radios}
<h2>{title}</h2><h4>Price: {price}</h4><h4>Rating: N.A.</h4>
<div class="col-sm-3" name="description"><form method="post" action="/d"><button class="btn btn-primary" type="submit">Description</button></form></div>
<div class="col-sm-3" name="bulletpoints"><form method="post" action="/f"><button class="btn btn-primary" type="submit">Features</button></form></div>
<div class="col-sm-3" name="reviews"><form method="post" action="/r"><button class="btn btn-primary" type="submit">Reviews</button></form></div>
<form method="post" action="/done/{sid}/{asin}/{{}}"><button type="submit" class="btn btn-lg purchase">Buy Now</button></form>
<!-- selected: {options} --></body></html>"""


def sub_page(sid, asin, sub):
    return f"""<html><body>{INSTRUCTION.format(goal_of(sid))}{BACK.format(sid=sid)}
<form method="post" action="/i"><button type="submit" class="btn btn-primary">&lt; Prev</button></form>
<p class="product-info">{sub} of {PRODUCTS[asin][0]}: a clip for hair.</p></body></html>"""


def done_page(reward):
    return f"""<html><body><div id="thankyou" class="text-center"><h1>Thank you for shopping with us!</h1></div>
<h3 align="mturk_code">Your code: </h3><p><pre>ABCDEF0123</pre> (Paste it in your MTurk interface.)</p>
<div style="display:none"><h4 id="goal-instruction-text">goal<pre>{GOAL}</pre></h4></div>
<h3   id="reward">Your score (min 0.0, max 1.0)<pre>{reward}</pre></h3>
<h4 hidden>Reward Details <div id="reward_info"><pre>{{}}</pre></div></h4></body></html>"""


def reward(asin, options):
    """This stand-in's score: 1 for the goal item with the goal colour, 0.5 with another, else 0."""
    if asin != "B0HAIRCLP1":
        return 0.0
    return 1.0 if options.get("color") == "natural black #1b" else 0.5


class Site(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.paths, self.sessions, self.bought, self.fail = [], set(), [], []  # fail: statuses to send first
        self.broken = None  # a route that always answers 500
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        parts = [urllib.parse.unquote(p) for p in self.path.lstrip("/").split("/")]  # as Werkzeug decodes
        srv.paths.append(parts)
        if srv.fail:
            return self.reply(srv.fail.pop(0), "<html>busy</html>")
        route, sid = (parts[0], parts[1]) if len(parts) > 1 else ("index", parts[0])
        if route == "index":
            srv.sessions.add(sid)
            return self.reply(200, search_page(sid))
        if route == srv.broken:
            return self.reply(500, "<html>Internal Server Error</html>")
        if sid not in srv.sessions:  # the site reads the goal of a session its index page made
            return self.reply(500, "<html>KeyError</html>")
        if route == "search_results":
            kw = parts[2]
            keywords = ast.literal_eval(kw) if kw.startswith("[") else [kw]
            return self.reply(200, results_page(sid, " ".join(keywords)))
        if route == "item_page":
            return self.reply(200, item_page(sid, parts[2], ast.literal_eval(parts[5])))
        if route == "item_sub_page":
            return self.reply(200, sub_page(sid, parts[2], parts[5]))
        if route == "done":
            options = ast.literal_eval(parts[3])
            srv.bought.append((sid, parts[2], options))
            return self.reply(200, done_page(reward(parts[2], options)))
        self.reply(404, "<html>Not Found</html>")

    def reply(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def site(background_server):
    return background_server(Site())


def make(site, split="test", **kw):
    return envs.make("webshop", split, source=site.url, retries=2, backoff=0.01, **kw)


def test_an_episode_reads_the_pages_as_react_did_and_buys_at_a_score_of_one(site):
    env = make(site)
    with pytest.raises(RuntimeError, match=r"call reset\(i\) before step"):
        env.step("search[clip]")
    first = env.reset(3)
    assert first == f"\nWebShop \nInstruction: \n{goal_of('fixed_3')} \n[Search] "
    obs, reward, done, _ = env.step("search[hair clip natural black]")
    assert site.paths[-1] == ["search_results", "fixed_3", "hair clip natural black", "1"]
    assert obs == ("\n[Back to Search] \nPage 1 (Total results: 5) \n[Next >] \n[B0HAIRCLP1] \nNatural Hair Clip "
                   "\n$10.99 \n[B0HAIRCLP2] \nHair Clip Set \n$5.49 \n[B0HAIRCLP3] \nMetal Hair Clip \n$7.00 ")
    assert GOAL not in obs and "B0HAIRCLP4" not in obs  # the instruction once, the first 3 products
    assert env.step("click[B0HAIRCLP1]")[0].startswith(
        "\n[Back to Search] \n[< Prev] \ncolor [black][natural black #1b]\nsize [small]\nNatural Hair Clip ")
    assert env.step("click[natural black #1b]")[:3] == ("You have clicked natural black #1b.", 0.0, False)
    assert site.paths[-1][5] == "{'color': 'natural black #1b'}"  # '#' quoted: the whole dict arrived
    assert env.step("click[Description]")[0].endswith("Description of Natural Hair Clip: a clip for hair. ")
    back = env.step("click[< Prev]")[0]
    assert "[black][[natural black #1b]]" in back  # the option clicked, as ReAct marks it
    assert env.step("think[The colour is set; buy it.]")[0] == "OK."
    obs, reward, done, info = env.step("click[Buy Now]")
    assert obs == "Your score (min 0.0, max 1.0): 1.0"
    assert (reward, done, info["success"], info["steps"]) == (1.0, True, True, 7)
    assert site.bought == [("fixed_3", "B0HAIRCLP1", {"color": "natural black #1b"})]
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("click[Buy Now]")


def test_a_partial_score_is_the_return_but_not_a_success_and_hidden_products_can_be_opened(site):
    env = make(site)
    env.reset(0)
    env.step("search[hair clip]")
    assert "Velvet Hair Clip" in env.step("click[B0HAIRCLP4]")[0]  # listed, though not shown
    env.step("click[< Prev]")
    env.step("click[B0HAIRCLP1]")
    env.step("click[black]")
    obs, reward, done, info = env.step("click[Buy Now]")
    assert (obs, reward, done, info["success"]) == ("Your score (min 0.0, max 1.0): 0.5", 0.5, True, False)


def test_actions_the_page_does_not_offer_are_invalid_and_the_step_limit_ends_with_zero(site):
    env = make(site, max_steps=15)
    env.reset(0)
    for action in ("click[Buy Now]", "click[B0HAIRCLP1]", "look around", "search[]x"):
        assert env.step(action)[0] == "Invalid action!"  # nothing to buy or open on the start page
    env.step("search[hair clip]")
    assert env.step("search[again]")[0] == "Invalid action!"  # only from the start page, as ReAct
    assert env.step("click[Next >]")[0] == "Invalid action!"  # ReAct's one result page
    assert env.step("click[B0NOTLISTED]")[0] == "Invalid action!"
    assert env.step("click[Back to Search]")[0].endswith("\n[Search] ")
    *_, info = env.step("search[hair clip]")
    for _ in range(5):
        obs, reward, done, info = env.step("think[hmm]")
    assert (reward, done, info["success"], info["steps"]) == (0.0, True, False, 15)  # nothing bought


def test_splits_are_fixed_goal_ids_and_the_hash_names_them(site):
    test, train = make(site), make(site, "train", n_tasks=3)
    assert len(test) == 500 and len(train) == 3
    train.reset(2)
    assert site.paths[-1] == ["fixed_1502"]  # WebShop's train goals start at 1500
    digest = envs.tasks_sha256(test, [0, 1])
    assert digest == envs.tasks_sha256(make(site), [0, 1]) != envs.tasks_sha256(test, [0, 2])


def test_a_server_that_is_down_or_not_webshop_fails_at_start_up_naming_the_url(site, background_server):
    dead = Site()
    url = dead.url
    dead.server_close()  # nothing listens there now
    with pytest.raises(retry_http.ServiceError, match=f"WebShop {url}/fixed_0"):
        envs.make("webshop", "test", source=url, retries=1, backoff=0.01)

    other = background_server(Site())
    other.fail = [200]  # a page without the instruction, as any other site's
    with pytest.raises(retry_http.ServiceError, match=f"{other.url}/fixed_0 is not a WebShop start page"):
        make(other)
    with pytest.raises(ValueError, match="URL of a WebShop server"):
        envs.make("webshop", "test", source="localhost:3000")


def test_busy_replies_are_retried_and_a_broken_site_names_the_page(site):
    env = make(site)
    env.reset(0)
    site.fail = [503, 502]
    assert env.step("search[hair clip]")[0].startswith("\n[Back to Search]")  # retried twice, then served
    site.fail = [500, 500, 500]
    with pytest.raises(retry_http.ServiceError, match=r"WebShop .*/item_page/fixed_0/B0HAIRCLP1/hair%20clip"):
        env.step("click[B0HAIRCLP1]")


def test_eval_records_the_goal_list_of_the_site(site):
    cfg = train.Config(envs="webshop", eval_split="test", eval_tasks=2,
                       env_options=json.dumps({"webshop": {"source": site.url}}))
    lists = evaluation.task_lists(cfg)
    assert lists["webshop"]["n"] == 2 and lists["webshop"]["sha256"] == envs.tasks_sha256(make(site), [0, 1])


def test_eval_main_runs_the_site_building_the_env_once(site, tmp_path, monkeypatch):
    """eval.py end to end on the site: the goal list is hashed and run from one construction of the env
    (each construction checks the start page of goal 0; before, evaluate() built it a second time)."""
    llm = type("Buyer", (), {"complete": lambda self, ps, *a, **k: [" Look.\nAction: search[clip]"] * len(ps)})()
    monkeypatch.setattr(train, "build_actor", lambda cfg, device: llm)
    monkeypatch.setattr(train, "ensure_checkpoints", lambda cfg: None)
    options = json.dumps({"webshop": {"source": site.url, "retries": 1, "backoff": 0.01}})
    evaluation.main([f"--out_dir={tmp_path}", "--envs=webshop", f"--env_options={options}", "--eval_split=test",
                     "--eval_tasks=2", "--eval_seeds=0", "--eval_trials=1", "--eval_methods=react",
                     "--concurrency=1", "--n_examples=0", "--progress=False"])  # fmt: skip
    start = lambda k: sum(p == [f"fixed_{k}"] for p in site.paths)  # noqa: E731 (GETs of goal k's start page)
    # fixed_1: read once for the hash, once by its episode. fixed_0 besides: the option check of
    # envs.factory, len() of the task list, the env hashed, the episodes' env (one: concurrency 1)
    assert (start(1), start(0)) == (2, 2 + 4)
    out = json.loads((tmp_path / "eval.json").read_text())
    assert out["tasks"]["webshop"] == {"split": "test", "n": 2, "sha256": envs.tasks_sha256(make(site), [0, 1])}
    assert out["results"]["webshop"]["react"]["n_tasks"] == 2


def test_an_episode_on_a_page_that_keeps_failing_is_void_naming_the_url(site):
    llm = type("Searcher", (), {"complete": lambda self, ps, *a, **k: [" Look.\nAction: search[clip]"] * len(ps)})()
    factory = envs.factory("webshop", "test", source=site.url, retries=1, backoff=0.01)
    site.broken = "search_results"
    (traj,) = actor.run_trials(factory, [0], llm, concurrency=1, strict=False)
    assert f"WebShop {site.url}/search_results/fixed_0/clip/1" in traj.error and not traj.success
