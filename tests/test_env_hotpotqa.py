"""HotpotQAEnv: ReAct's tool behaviour, HotPotQA scoring, the generated world's splits, expert,
explorer and plans, the HotPotQA JSON source and the MediaWiki source (against a local stand-in)."""

import http.server
import json
import random
import re
import threading
import urllib.parse

import pytest

import envs
from worlds import hotpotqa, hotpotqa_world
from worlds.episodes import rollout


@pytest.fixture(scope="module")
def test_env():
    return envs.make("hotpotqa", "test", seed=0)


def explore(env, i, seed, plan=None):
    rng = random.Random(seed)
    return rollout(env, i, lambda: env.explorer(rng, plan=plan))


def titles_and_answers(env):
    out = set()
    for t in env.tasks:
        out |= set(t.pages) | {t.answer}
    return out - {"yes", "no"} - {str(y) for y in range(1700, 2100)}


def test_make_sizes_and_determinism():
    env = envs.make("hotpotqa", "train", seed=3)
    assert isinstance(env, hotpotqa.HotpotQAEnv) and env.name == "hotpotqa" and env.max_steps == 6
    assert len(env) == 200 and len(envs.make("hotpotqa", "test")) == 100
    again, small = envs.make("hotpotqa", "train", seed=3), envs.make("hotpotqa", "train", seed=3, n_tasks=7)
    assert [t.question for t in again.tasks] == [t.question for t in env.tasks]
    assert [t.pages for t in small.tasks] == [t.pages for t in env.tasks[:7]]  # n_tasks keeps the prefix
    other = envs.make("hotpotqa", "train", seed=4)
    assert sum(a.question == b.question for a, b in zip(env.tasks, other.tasks, strict=True)) < 5
    assert env.reset(0).endswith(f"Question: {env.tasks[0].question}")
    with pytest.raises(ValueError, match="difficulty"):
        envs.make("hotpotqa", difficulty="brutal")
    with pytest.raises(ValueError, match="n_tasks"):
        envs.make("hotpotqa", n_tasks=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_train_and_test_share_no_entity(seed):
    train, test = envs.make("hotpotqa", "train", seed=seed), envs.make("hotpotqa", "test", seed=seed)
    a, b = titles_and_answers(train), titles_and_answers(test)
    assert len(a) > 1000 and len(b) > 500
    assert not a & b
    assert not {t.question for t in train.tasks} & {t.question for t in test.tasks}


def name_words(env):
    """The capitalized words of every page title that are not first names, countries, work-title words
    or an organization's kind: surnames, cities and organization names, built from name stems."""
    w = hotpotqa_world
    fixed = set(w.FIRST_NAMES) | {a for a, _ in w.ALIASES} | set(w.COUNTRIES)
    fixed |= set(w.WORK_ADJECTIVES) | set(w.WORK_NOUNS) | {"The"}
    fixed |= {suffix for _, suffix in w.ORG_KINDS.values()}
    return {w for t in env.tasks for title in t.pages for w in re.findall(r"[A-Z][a-z]+", title)} - fixed


@pytest.mark.parametrize("names", [1, 2])
def test_extra_name_inventories_hold_no_name_of_the_splits(names):
    """names=1 | 2: every name stem comes from that inventory (neither split's, nor the other's); the
    tasks are new ones, not renamed copies, and the explorer's failures are still fixed by the plan."""
    env = envs.make("hotpotqa", "train", names=names, n_tasks=100)
    stems = {s.capitalize() for s in hotpotqa_world.NAME_STEMS[names]}
    others = {s.capitalize() for k, v in hotpotqa_world.NAME_STEMS.items() if k != names for s in v}
    words = name_words(env)
    assert len(words) > 300
    assert all(any(w.startswith(s) for s in stems) for w in words)
    assert not any(w.startswith(s) for w in words for s in others)
    for split in ("train", "test"):
        assert not words & name_words(envs.make("hotpotqa", split))
    default = envs.make("hotpotqa", "train", n_tasks=100)  # renamed copies would all match here
    same = lambda a, b: a.trap == b.trap and a.question.split()[:4] == b.question.split()[:4]
    assert sum(same(a, b) for a, b in zip(env.tasks, default.tasks, strict=True)) < 50
    assert envs.make("hotpotqa", "test", names=names, n_tasks=5).tasks[0].question != env.tasks[0].question
    fails = fixed = 0
    for i in range(len(env)):
        traj, _, info = explore(env, i, seed=i)
        assert rollout(env, i, env.expert)[1] == 1.0
        if not info["success"]:
            fails += 1
            fixed += explore(env, i, seed=i, plan=env.plan(traj))[2]["success"]
    assert fails >= 30 and fixed >= 0.95 * fails
    for bad in (3, True, "1", [1]):
        with pytest.raises(ValueError, match="unknown names"):
            envs.make("hotpotqa", names=bad)
    with pytest.raises(ValueError, match="names=1 picks names of the generated world"):
        envs.make("hotpotqa", names=1, source="wikipedia", questions="q.json")


def test_expert_solves_every_task_of_both_splits():
    for split in ("train", "test"):
        env = envs.make("hotpotqa", split)
        for i in range(len(env)):
            _, ret, info = rollout(env, i, env.expert)
            assert ret == 1.0 and info["success"] and info["em"] == 1.0 and info["f1"] == 1.0, (split, i)


def test_explorer_fails_visibly_and_the_plan_fixes_it(test_env):
    env, fails, fixed, kinds = test_env, 0, 0, set()
    for i in range(len(env)):
        traj, ret, info = explore(env, i, seed=i)
        assert len(env.render(traj)) < 4000  # a trial is well under ~1000 tokens
        if info["success"]:
            assert env.tasks[i].trap == ""
            assert env.plan(traj) is None  # nothing went wrong: no plan
            continue
        fails += 1
        kinds.add(env.tasks[i].trap)
        plan = env.plan(traj)
        assert plan is not None and "Plan: Search[" in plan and len(plan) < 250, plan
        _, ret2, info2 = explore(env, i, seed=i, plan=plan)
        fixed += info2["success"]
    assert 0.2 <= 1 - fails / len(env) <= 0.6
    assert fixed >= 0.95 * fails
    assert kinds == {"namesake", "alias", "onehop"}


def test_difficulty_sets_the_share_of_traps():
    rates = {}
    for difficulty in ("easy", "hard"):
        env = envs.make("hotpotqa", "test", difficulty=difficulty, n_tasks=60)
        rates[difficulty] = sum(explore(env, i, seed=0)[2]["success"] for i in range(len(env))) / len(env)
    assert rates["hard"] == 0.0 and rates["easy"] >= 0.65


def test_plan_reads_only_the_trajectory_text(test_env):
    env = test_env
    i = next(k for k, t in enumerate(env.tasks) if t.trap == "namesake" and "founder" in t.question)
    traj, _, info = explore(env, i, seed=0)
    assert not info["success"]
    plan = env.plan(traj)
    as_dicts = [{"thought": t, "action": a, "observation": o} for t, a, o in traj]
    assert env.plan(as_dicts) == env.plan([(a, o) for _, a, o in traj]) == plan
    # the right title comes from the Similar list the explorer was shown
    similar = next(o for _, _, o in traj if o.startswith("Could not find"))
    right = plan.split("Search[")[2].split("]")[0]
    assert f"'{right}'" in similar and right != traj[2][1][len("Search[") : -1]
    text = env.render(traj)
    assert text.startswith(f"Question: {env.question}\nThought 1: ")
    assert "Observation 4: Answer is INCORRECT" in text


def test_search_and_lookup_behave_like_react():
    env = envs.make("hotpotqa", "test", n_tasks=20, max_steps=20)
    i = next(k for k, t in enumerate(env.tasks) if t.trap == "alias")
    task = env.tasks[i]
    env.reset(i)
    title = task.gold_titles[-1]
    obs, reward, done, info = env.step(f"Search[{title}]")
    assert obs == " ".join(task.pages[title][:5]) and (reward, done, info["success"]) == (0.0, False, False)
    surname = title.split()[-1]
    hits = [s for s in task.pages[title] if surname.lower() in s.lower()]
    assert len(hits) >= 4
    for k, sentence in enumerate(hits, 1):
        assert env.step(f"Lookup[{surname.lower()}]")[0] == f"(Result {k} / {len(hits)}) {sentence}"
    assert env.step(f"Lookup[{surname.lower()}]")[0] == "No more results."
    assert env.step(f"Lookup[{surname}]")[0].startswith("(Result 1 / ")  # a new keyword starts over
    env.reset(i)
    assert env.step("Lookup[born]")[0].startswith("The last page Searched was not found")
    obs = env.step(f"Search[{title[:-1]}]")[0]
    assert obs.startswith(f"Could not find {title[:-1]}. Similar: [") and f"'{title}'" in obs
    assert env.step("Lookup[born]")[0].startswith("The last page Searched was not found")
    short = envs.make("hotpotqa", "test", n_tasks=20, n_sentences=2)
    short.reset(i)
    assert short.step(f"Search[{title}]")[0] == " ".join(task.pages[title][:2])


def test_bad_actions_never_raise(test_env):
    env = test_env
    env.reset(0)
    page = env.tasks[0].gold_titles[0]
    for bad in ["", "   ", "garbage", "Search", "Search[", "Think[hmm]", "Finish[]", "search[ ]", None, 42]:
        obs, reward, done, info = env.step(bad)
        assert obs.startswith("Invalid action") and "Search[<entity>]" in obs and reward == 0.0
        if done:
            break
    env.reset(0)
    want = env.step(f"Search[{page}]")[0]
    for variant in [f"search[{page}]", f"  SEARCH [{page.upper()}]  ", f"Search[  {page.lower()} ]"]:
        assert env.step(variant)[0] == want
    obs, reward, done, info = env.step(f"finish[  {env.tasks[0].answer.upper()}. ]")
    assert (obs, reward, done, info["success"]) == ("Answer is CORRECT", 1.0, True, True)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("Search[x]")
    with pytest.raises(IndexError, match="out of range"):
        env.reset(len(env))
    with pytest.raises(IndexError, match="out of range"):
        env.reset(-1)
    fresh = envs.make("hotpotqa", n_tasks=1)
    for call in (lambda: fresh.step("Search[x]"), fresh.expert, lambda: fresh.explorer(random.Random(0))):
        with pytest.raises(RuntimeError, match="reset"):
            call()


def test_step_limit_ends_the_episode(test_env):
    env = test_env
    env.reset(1)
    for k in range(1, 7):
        obs, reward, done, info = env.step("Lookup[anything]")
        assert done == (k == 6) and reward == 0.0
    assert info["truncated"] and info["em"] == 0.0 and info["answer"] == env.tasks[1].answer


def test_hotpotqa_scoring():
    assert hotpotqa.normalize_answer("  The Glass-Orchard, an Opera! ") == "glassorchard opera"
    assert hotpotqa.answer_f1("the Glass Orchard", "Glass Orchard") == 1.0
    assert hotpotqa.answer_f1("Glass Tower", "Glass Orchard") == pytest.approx(0.5)
    assert hotpotqa.answer_f1("no", "yes") == 0.0 and hotpotqa.answer_f1("yes", "yes") == 1.0
    assert hotpotqa.answer_f1("yes it is", "yes") == 0.0  # yes/no only score exactly, as in HotPotQA
    env = envs.make("hotpotqa", "test", n_tasks=5)
    i = next(k for k, t in enumerate(env.tasks) if t.answer not in ("yes", "no") and not t.answer.isdigit())
    env.reset(i)
    first = env.tasks[i].answer.split()[0]
    obs, reward, done, info = env.step(f"Finish[{first} Smith]")
    assert reward == float(first == env.tasks[i].answer) and 0.0 < info["f1"] <= 1.0
    assert info["answer"] == env.tasks[i].answer and obs.startswith("Answer is")


def write_records(tmp_path, records, name="hotpot.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return str(path)


RECORDS = [
    {"_id": "a1", "question": "Which city hosts the Vasel Tower?", "answer": "Morn", "type": "bridge",
     "level": "easy", "supporting_facts": [["Vasel Tower", 0], ["Morn", 1]],
     "context": [["Vasel Tower", ["The Vasel Tower is a tower.", " It stands in Morn."]],
                 ["Morn", ["Morn is a city.", "Morn has a river.", "Morn is old."]],
                 ["Vasel Bridge", ["The Vasel Bridge is a bridge."]]]},
    {"_id": "b2", "question": "Are Ada and Bo both poets?", "answer": "yes", "type": "comparison",
     "level": "hard", "supporting_facts": [["Ada", 0], ["Bo", 0]],
     "context": [["Ada", ["Ada was a poet."]], ["Bo", ["Bo was a poet."]]]},
    {"_id": "c3", "question": "Who wrote Q?", "answer": "Cy", "type": "bridge", "level": "medium",
     "supporting_facts": [["Q", 0]], "context": [["Q", ["Q was written by Cy."]]]},
]


def test_hotpot_json_source(tmp_path):
    env = envs.make("hotpotqa", source=write_records(tmp_path, RECORDS))
    assert len(env) == 3 and len(envs.make("hotpotqa", source=env.source, n_tasks=2)) == 2
    env.reset(0)
    assert env.step("Search[vasel tower]")[0] == "The Vasel Tower is a tower. It stands in Morn."
    assert env.step("Lookup[morn]")[0] == "(Result 1 / 1) It stands in Morn."
    similar = "Similar: ['Vasel Tower', 'Vasel Bridge', 'Morn']."
    assert env.step("Search[Vasel]")[0] == f"Could not find Vasel. {similar}"
    for i in range(3):
        _, ret, info = rollout(env, i, env.expert)
        assert ret == 1.0 and info["success"]
    with pytest.raises(NotImplementedError, match="source"):
        env.explorer(random.Random(0))


@pytest.mark.parametrize(
    "index, change, message",
    [
        (1, lambda r: r.pop("answer"), r"record 1 \(_id 'b2'\): missing key 'answer'"),
        (2, lambda r: r.pop("context"), r"record 2 \(_id 'c3'\): missing key 'context'"),
        (0, lambda r: r.pop("_id"), r"record 0: missing key '_id'"),
        (2, lambda r: r.update(context=[["Q", "not a list"]]), r"_id 'c3'\): context\[0\] must be"),
        (1, lambda r: r.update(supporting_facts=[["Ada"]]), r"_id 'b2'\): supporting_facts\[0\]"),
        (1, lambda r: r.update(question=3), r"_id 'b2'\): 'question' and 'answer' must be strings"),
    ],
)
def test_malformed_json_names_file_record_and_key(tmp_path, index, change, message):
    records = json.loads(json.dumps(RECORDS))
    change(records[index])
    path = write_records(tmp_path, records)
    with pytest.raises(ValueError, match=message) as err:
        envs.make("hotpotqa", source=path)
    assert path in str(err.value)


def test_unreadable_json_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        envs.make("hotpotqa", source=str(bad))
    with pytest.raises(ValueError, match="list of HotPotQA records"):
        envs.make("hotpotqa", source=write_records(tmp_path, {"_id": 1}))
    with pytest.raises(FileNotFoundError):
        envs.make("hotpotqa", source=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="questions="):
        envs.make("hotpotqa", source="wikipedia")


class FakeWiki(http.server.BaseHTTPRequestHandler):
    """Answers the two MediaWiki API queries ReAct's search needs, after `fail` 503s."""

    pages = {"Vasel Tower": "The Vasel Tower is a tower. It stands in Morn.\nIt is tall. It is grey. "
             "It is old. It has a bell.", "Vasel": "Vasel may refer to:\nVasel Tower\nVasel Bridge"}
    fail, calls, status, headers = 0, [], 503, {}

    def do_GET(self):
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(self.path).query))
        FakeWiki.calls.append(q)
        FakeWiki.last_agent = self.headers.get("User-Agent", "")
        if FakeWiki.fail:
            FakeWiki.fail -= 1
            self.send_response(FakeWiki.status)
            for k, v in FakeWiki.headers.items():
                self.send_header(k, v)
            self.end_headers()
            return
        if q.get("prop") == "extracts":
            title = q["titles"]
            page = {"pageid": 1, "title": title, "extract": self.pages[title]} if title in self.pages else \
                {"ns": 0, "title": title, "missing": ""}
            body = {"batchcomplete": "", "query": {"pages": {"1" if "extract" in page else "-1": page}}}
        else:
            hits = [t for t in ["Vasel Tower", "Vasel Bridge"] if q["srsearch"].split()[0] in t]
            body = {"query": {"searchinfo": {"totalhits": len(hits)}, "search": [{"title": t} for t in hits]}}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def wiki(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeWiki)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeWiki.fail, FakeWiki.calls, FakeWiki.status, FakeWiki.headers = 0, [], 503, {}
    questions = write_records(tmp_path, [{k: v for k, v in r.items() if k != "context"} for r in RECORDS])
    yield f"http://127.0.0.1:{server.server_address[1]}/w/api.php", questions
    server.shutdown()
    server.server_close()


def test_wikipedia_source_against_local_stand_in(wiki):
    url, questions = wiki
    env = envs.make("hotpotqa", source="wikipedia", questions=questions, wiki_url=url, wiki_backoff=0.0)
    assert len(env) == 3
    env.reset(0)
    first5 = "The Vasel Tower is a tower. It stands in Morn. It is tall. It is grey. It is old."
    assert env.step("Search[Vasel Tower]")[0] == first5
    assert env.step("Lookup[bell]")[0] == "(Result 1 / 1) It has a bell."
    assert FakeWiki.calls[0]["format"] == "json" and FakeWiki.calls[0]["explaintext"] == "1"
    # a disambiguation page and a missing page both answer with the search hits
    assert env.step("Search[Vasel]")[0] == "Could not find Vasel. Similar: ['Vasel Tower', 'Vasel Bridge']."
    assert env.step("Search[Nowhere]")[0] == "Could not find Nowhere. Similar: []."
    n = len(FakeWiki.calls)
    env.step("Search[Vasel Tower]")  # cached: no new request
    assert len(FakeWiki.calls) == n
    assert env.step("Finish[morn]")[1] == 1.0


def test_wikipedia_retries_then_fails_clearly(wiki):
    url, questions = wiki
    env = envs.make("hotpotqa", source="wikipedia", questions=questions, wiki_url=url, wiki_backoff=0.0,
                    wiki_retries=2)
    env.reset(0)
    FakeWiki.fail = 2  # two 503s, then an answer: retried
    assert env.step("Search[Vasel Tower]")[0].startswith("The Vasel Tower is a tower.")
    FakeWiki.fail = 3  # more 503s than retries
    with pytest.raises(RuntimeError, match=r"failed after 3 attempts; last error: HTTP 503") as err:
        env.step("Search[Morn]")
    assert url in str(err.value)
    dead = envs.make("hotpotqa", source="wikipedia", questions=questions, wiki_url="http://127.0.0.1:9/api.php",
                     wiki_backoff=0.0, wiki_retries=1, wiki_timeout=2.0)
    dead.reset(0)
    with pytest.raises(RuntimeError, match="failed after 2 attempts; last error: connection error"):
        dead.step("Search[Morn]")


def test_wikipedia_rate_limits_are_waited_out_and_refusals_are_clear(wiki):
    url, questions = wiki
    env = envs.make("hotpotqa", source="wikipedia", questions=questions, wiki_url=url, wiki_backoff=0.0,
                    wiki_retries=2)
    env.reset(0)
    FakeWiki.fail, FakeWiki.status, FakeWiki.headers = 2, 429, {"Retry-After": "0"}  # rate limited twice
    assert env.step("Search[Vasel Tower]")[0].startswith("The Vasel Tower is a tower.")
    FakeWiki.fail, FakeWiki.status, FakeWiki.headers = 1, 403, {}  # refused: not retried
    n = len(FakeWiki.calls)
    with pytest.raises(RuntimeError, match=r"answered HTTP 403 \(Wikipedia refuses clients it cannot"):
        env.step("Search[Morn]")
    assert len(FakeWiki.calls) == n + 1
    assert "retroformer" in FakeWiki.last_agent


def test_a_failing_wikipedia_voids_the_episode_not_the_run(wiki, tmp_path):
    from actor import run_trials
    from worlds.scripted import ExpertLLM

    url, questions = wiki
    make_env = lambda: envs.make("hotpotqa", source="wikipedia", questions=questions, wiki_url=url,
                                 wiki_backoff=0.0, wiki_retries=0)  # fmt: skip
    FakeWiki.fail = 100  # every request fails
    trajs = run_trials(make_env, [0, 1], ExpertLLM(make_env), strict=False, examples=(),
                       log_path=tmp_path / "log.jsonl")  # fmt: skip
    assert all(t.error and "MediaWiki API" in t.error and "HTTP 503" in t.error for t in trajs)
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2  # logged, as void
