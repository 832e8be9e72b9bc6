"""train.py and eval.py against an OpenAI-compatible server in this process that spoils a seeded share of
the actor's requests in seven ways: 429 with Retry-After: 0, 500, 503, a 200 with malformed JSON, a
connection closed before the headers, a reply cut in the middle of its body, a 1.5 s stall (past the
client's read timeout). Every transient fault is retried; a run that cannot go on stops with one line
that names the cause, never a traceback; the API key, which error bodies echo, is in no output."""

import collections
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_train import make_tiny_retrospector

import eval as ev
import train
from actor import HTTPLLM, LLMError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sk-flaky-SECRET-42"
FAULTS = ("429", "500", "503", "garbage", "close", "cut", "stall")
CHECK = "Say OK."  # the prompt of the start-up check (infra/http.py)


class FlakyServer(ThreadingHTTPServer):
    """/v1/completions and /v1/chat/completions answering what the scripted explorer does (the offline
    default's actor) on hotpotqa. spoil(prompt, attempt) -> None (answer) or one of FAULTS, where
    attempt counts the requests seen for that prompt so far: the faults do not depend on thread order."""

    daemon_threads = True

    def __init__(self, spoil):
        super().__init__(("127.0.0.1", 0), FlakyHandler)
        cfg = train.parse_config(["--envs=hotpotqa", "--actor=explorer"])
        self.brain, self.spoil = train.build_actor(cfg, "cpu"), spoil
        self.lock, self.attempts, self.faults = threading.Lock(), collections.Counter(), collections.Counter()
        self.n_requests = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def seeded(share: float, seed: int = 0, spare=()):
    """spoil(): a share of requests gets a fault drawn from a hash of (seed, prompt, attempt)."""

    def spoil(prompt, attempt):
        if prompt in spare:
            return None
        h = zlib.crc32(f"{seed}/{attempt}/{prompt}".encode())
        return FAULTS[h % len(FAULTS)] if (h >> 8) % 1000 < share * 1000 else None

    return spoil


class FlakyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: FlakyServer

    def log_message(self, *args):
        pass

    def reply(self, status, data: bytes, headers=(), cut=False):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data[: len(data) // 2] if cut else data)
        except OSError:  # the client gave up on a stalled reply (its read timeout) and hung up
            self.close_connection = True
        if cut:  # the rest never comes: the client reads a body cut short
            self.close_connection = True

    def do_POST(self):
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        with s.lock:
            attempt = s.attempts[prompt]
            s.attempts[prompt] += 1
            s.n_requests += 1
        fault = s.spoil(prompt, attempt)
        with s.lock:
            s.faults[fault] += 1
        echo = f"server error (request had Authorization: {self.headers.get('Authorization')})"
        err = json.dumps({"error": {"message": echo, "type": "server_error"}}).encode()
        if fault == "close":  # before the status line: the client sees the connection dropped
            self.close_connection = True
            return
        if fault in ("429", "500", "503"):
            return self.reply(int(fault), err, [("Retry-After", "0")] if fault == "429" else ())
        if fault == "garbage":
            return self.reply(200, b'{"choices": [{"text": "unfinished')
        if fault == "stall":
            time.sleep(1.5)
        text = "OK" if prompt == CHECK else s.brain.answer(prompt)
        choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        data = json.dumps({"choices": [choice | {"index": 0, "finish_reason": "stop"}]}).encode()
        self.reply(200, data, cut=fault == "cut")


@pytest.fixture
def flaky(background_server):
    return lambda spoil: background_server(FlakyServer(spoil))


@pytest.fixture(scope="module")
def retro_path(tmp_path_factory):
    return make_tiny_retrospector(tmp_path_factory.mktemp("retro"))


def http_args(srv, out_dir, retro_path, api, **kw):
    args = dict(out_dir=out_dir, envs="hotpotqa", actor="http", actor_url=srv.url, actor_api=api,
                actor_api_key_env="RF_FLAKY_KEY", actor_backoff=0.01, actor_timeout=1.0, actor_max_retries=6,
                retrospector_path=retro_path, reflection_max_tokens=8, lora_r=4, lora_targets="q_proj,v_proj",
                updates=1, tasks_per_env=6, max_trials=2, minibatch_size=4, micro_batch_size=4,
                eval_tasks=6, eval_seeds="0", eval_trials=2, concurrency=4, progress=False) | kw  # fmt: skip
    return [f"--{k}={v}" for k, v in args.items()]


def lines(path):
    return [json.loads(x) for x in open(path).read().splitlines()]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_train_and_eval_finish_when_30_percent_of_requests_fail(flaky, tmp_path, retro_path, api, monkeypatch,
                                                                 capsys):  # fmt: skip
    monkeypatch.setenv("RF_FLAKY_KEY", KEY)
    srv = flaky(seeded(0.3, seed=3 if api == "chat" else 0))
    out = str(tmp_path / "run")
    train.main(http_args(srv, out, retro_path, api))  # returns: exit 0
    ev.main(http_args(srv, out, retro_path, api))
    assert all(srv.faults[f] > 0 for f in FAULTS), srv.faults  # each kind of fault was met
    assert 0.2 < sum(srv.faults[f] for f in FAULTS) / srv.n_requests < 0.45  # about 30% of requests spoiled

    episodes = lines(f"{out}/episodes.jsonl")
    keys = [(e["update"], e["task"], e["trial"]) for e in episodes]
    assert len(keys) == len(set(keys)) and {k[1] for k in keys if k[2] == 0} and len(set(keys)) >= 6
    logged = lines(f"{out}/eval_episodes.jsonl")
    keys = collections.Counter((e["method"], e["task"], e["trial"]) for e in logged)
    assert set(keys.values()) == {1}  # every task logged exactly once per trial and method
    assert {t for m, t, k in keys if m == "shared"} == set(range(6))
    results = json.load(open(f"{out}/eval.json"))["results"]["hotpotqa"]
    for method, r in results.items():
        void_tasks = {e["task"] for e in logged if e["error"] and e["method"] in ("shared", method)}
        assert r["n_void"] == len(void_tasks)
        assert r["n_tasks"] == 6
    printed = capsys.readouterr()
    for text in [printed.out, printed.err] + [open(f"{out}/{f}").read() for f in os.listdir(out)
                                              if f.endswith((".json", ".jsonl", ".svg"))]:  # fmt: skip
        assert KEY not in text


@pytest.mark.parametrize("script, api", [("eval.py", "completions"), ("train.py", "chat")])
def test_every_request_failing_from_the_first_exits_at_once_naming_the_cause(flaky, tmp_path, retro_path,
                                                                              script, api):  # fmt: skip
    srv = flaky(seeded(1.0))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, os.path.join(ROOT, script),
                        *http_args(srv, str(tmp_path / "run"), retro_path, api)],
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
                       env=os.environ | {"RF_FLAKY_KEY": KEY})  # fmt: skip
    assert p.returncode != 0 and time.perf_counter() - t0 < 60
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the actor's start-up check failed: POST {srv.url}/")
    assert "failed after 3 attempts; last error: " in last  # one line: the cause, then what to do
    assert last.endswith(("is the server up, and the URL right?", "see its log", "check both",
                          "raise the timeout", "the right API?"))  # fmt: skip
    assert KEY not in p.stdout + p.stderr


@pytest.mark.parametrize("main, api", [(train.main, "completions"), (ev.main, "chat")])
def test_every_request_failing_after_the_check_stops_on_void_episodes(flaky, tmp_path, retro_path, main, api):
    srv = flaky(seeded(1.0, spare=(CHECK,)))
    args = http_args(srv, str(tmp_path / "run"), retro_path, api, actor_max_retries=1)
    if main is ev.main:  # eval.py needs adapters to load: a clean training run first
        clean = flaky(seeded(0.0))
        train.main(http_args(clean, str(tmp_path / "run"), retro_path, api))
    with pytest.raises(SystemExit) as info:
        main(args)
    msg = str(info.value)
    assert "episodes are void (more than max_void_share=0.25)" in msg and "Most common cause" in msg
    assert "failed after 2 attempts; last error: " in msg and "\n" not in msg


@pytest.mark.parametrize("fault, cause", [("cut", "reply cut short (IncompleteRead"),
                                          ("close", "connection error: RemoteDisconnected"),
                                          ("garbage", "malformed reply"), ("stall", "timed out"),
                                          ("503", "HTTP 503: server error")])  # fmt: skip
def test_each_transient_fault_is_retried_and_named(flaky, caplog, fault, cause):
    srv = flaky(lambda prompt, attempt: fault if attempt == 0 else None)
    llm = HTTPLLM(srv.url, timeout=(1.0, 1.0), backoff=0.001, max_retries=1)
    assert llm.complete([CHECK]) == ["OK"]
    assert cause in caplog.text and "retry 1/1" in caplog.text
    srv.spoil = lambda prompt, attempt: fault  # and always: the error names the same cause
    with pytest.raises(LLMError, match=r"failed after 2 attempts; last error: " + cause.split("(")[0]):
        llm.complete([CHECK])


def test_a_url_that_cannot_be_sent_to_is_final_at_once():
    t0 = time.perf_counter()
    with pytest.raises(LLMError, match=r"cannot be sent \(InvalidURL.*check the URL"):
        HTTPLLM("http://[::1/v1", backoff=10.0).complete(["x"])
    assert time.perf_counter() - t0 < 1.0  # not retried
