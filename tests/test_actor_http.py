"""HTTPLLM against a local stdlib server that injects faults: retries, Retry-After, clear errors,
no lost or duplicated episodes, and an API key that never leaks."""

import json
import logging
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_actor import FakeEnv

from actor import HTTPLLM, LLMError, RolloutError, Trajectory, run_trial, run_trials
from worlds.scripted import ExpertLLM

KEY = "sk-test-SECRET-0123456789"


class FaultServer(ThreadingHTTPServer):
    """OpenAI-style /v1/completions and /v1/chat/completions answering expert actions for FakeEnv.
    fault(prompt, attempt) -> None (answer) or one of "429", "500", "garbage", "stall", "401",
    "404", "400"; attempt counts the requests seen for that prompt so far."""

    daemon_threads = True

    def __init__(self, fault, expert=None):
        super().__init__(("127.0.0.1", 0), FaultHandler)
        self.fault, self.expert = fault, expert or ExpertLLM(FakeEnv)
        self.attempts, self.lock, self.auth, self.stall_s = {}, threading.Lock(), set(), 1.0
        self.n_ok = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        s: FaultServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        with s.lock:
            attempt = s.attempts.get(prompt, 0)
            s.attempts[prompt] = attempt + 1
            s.auth.add(self.headers.get("Authorization"))
        fault = s.fault(prompt, attempt)
        err = lambda msg: {"error": {"message": msg, "type": "x", "param": None, "code": None}}
        if fault == "429":
            return self.reply(429, err("slow down"), [("Retry-After", "0")])
        if fault == "500":
            return self.reply(500, err("boom"))
        if fault == "garbage":
            return self.reply(200, b"{not json at all")
        if fault == "stall":
            time.sleep(s.stall_s)
            return self.reply(200, {"choices": [{"text": " late\nAction: answer[late]"}]})
        if fault == "401":
            return self.reply(401, err(f"Incorrect API key provided: {self.headers.get('Authorization')}"))
        if fault in ("404", "400"):
            return self.reply(int(fault), err("no such thing"))
        text = s.expert.answer(prompt) + "\nObservation: hallucinated"  # client cuts at the stop string
        with s.lock:
            s.n_ok += 1
        choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        self.reply(200, {"choices": [choice | {"index": 0, "finish_reason": "stop"}]})


@pytest.fixture
def serve(background_server):
    return lambda fault, expert=None: background_server(FaultServer(fault, expert))


def client(srv, **kw):
    kw = dict(backoff=0.001, max_backoff=0.01, timeout=(1.0, 0.25), max_retries=6) | kw
    return HTTPLLM(srv.url, model="m", api_key_env="RF_TEST_KEY", **kw)


def test_faults_are_retried_and_no_episode_is_lost(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("RF_TEST_KEY", KEY)
    faults = ["429", "500", "garbage", "stall"]

    def fault(prompt, attempt):  # each prompt meets two different faults before an answer
        start = zlib.crc32(prompt.encode()) % 4
        return [faults[start], faults[(start + 1) % 4]][attempt] if attempt < 2 else None

    srv = serve(fault)
    log = tmp_path / "log.jsonl"
    tasks = list(range(10))
    trajs = run_trials(FakeEnv, tasks, client(srv), log_path=log, concurrency=4, examples=[])
    assert all(t.success and t.error is None for t in trajs) and [t.task for t in trajs] == tasks
    assert all(n == 3 for n in srv.attempts.values()) and srv.n_ok == sum(len(t.steps) for t in trajs)
    logged = [Trajectory.from_json(x) for x in log.read_text().splitlines()]
    assert sorted(t.task for t in logged) == tasks  # each episode exactly once
    assert srv.auth == {f"Bearer {KEY}"}


def test_retry_after_is_honoured(serve):
    srv = serve(lambda prompt, attempt: "429" if attempt == 0 else None)
    srv.RequestHandlerClass = type("H", (FaultHandler,), {})
    orig = FaultHandler.reply

    def reply(self, status, body, headers=()):  # ask for a 1 s wait instead of 0
        orig(self, status, body, [("Retry-After", "1")] if status == 429 else headers)

    srv.RequestHandlerClass.reply = reply
    t0 = time.perf_counter()
    out = client(srv).complete(["Task 2: tell me the secret word of room 2.\nYou are in room 2.\nThought:"])
    assert time.perf_counter() - t0 >= 1.0 and out == [" I should look for the word.\nAction: look"]


def test_chat_api(serve):
    srv = serve(lambda prompt, attempt: None)
    llm = client(srv, api="chat")
    prompt = "Task 4: tell me the secret word of room 4.\nYou are in room 4.\nThought:"
    assert llm.complete([prompt, prompt]) == [" I should look for the word.\nAction: look"] * 2
    assert llm.count_tokens(prompt) > HTTPLLM(srv.url).count_tokens(prompt)  # chat template overhead


def test_a_run_that_keeps_failing_ends_with_a_clear_error(serve, tmp_path, caplog):
    srv = serve(lambda prompt, attempt: "500")
    log = tmp_path / "log.jsonl"
    tasks = list(range(8))
    with pytest.raises(RolloutError, match=r"8 of 8 episodes failed in the backend") as info:
        run_trials(FakeEnv, tasks, client(srv, max_retries=2), log_path=log, concurrency=2, examples=[])
    trajs = info.value.trajectories
    assert [t.task for t in trajs] == tasks and all(t.error and not t.success for t in trajs)
    assert "failed after 3 attempts; last error: HTTP 500: boom" in trajs[0].error
    assert sum("not started" in t.error for t in trajs) >= 8 - 2 - 3  # gave up after 3 in a row
    assert len(srv.attempts) <= 2 + 3  # the dead endpoint was not hammered for every task
    lines = log.read_text().splitlines()
    assert sorted(json.loads(x)["task"] for x in lines) == tasks
    assert all(json.loads(x)["error"] for x in lines)
    assert "8 of 8 episodes failed" in caplog.text
    # strict=False returns the results instead
    trajs = run_trials(FakeEnv, [0], client(srv, max_retries=0), strict=False, examples=[])
    assert trajs[0].error.startswith("POST ") and not trajs[0].success


def test_connection_refused_is_retried_then_reported():
    llm = HTTPLLM("http://127.0.0.1:9/v1", max_retries=2, backoff=0.001, timeout=(0.5, 0.5))
    with pytest.raises(LLMError, match="failed after 3 attempts; last error: connection error"):
        llm.complete(["hi"])


@pytest.mark.parametrize(
    "code, hint",
    [
        ("401", "check the environment variable RF_TEST_KEY"),
        ("404", "check the base URL"),
        ("400", "context"),
    ],
)
def test_fatal_errors_are_not_retried_and_never_leak_key(serve, tmp_path, monkeypatch, caplog, code, hint):
    monkeypatch.setenv("RF_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    srv = serve(lambda prompt, attempt: code)
    llm = client(srv)
    with pytest.raises(LLMError, match=hint) as info:
        run_trial(FakeEnv(), 0, llm, examples=[])
    assert list(srv.attempts.values()) == [1]  # not retried
    log = tmp_path / "log.jsonl"
    trajs = run_trials(FakeEnv, [0, 1], llm, log_path=log, strict=False, examples=[])
    assert all(hint in t.error for t in trajs)
    for text in (str(info.value), repr(llm), caplog.text, log.read_text()):
        assert KEY not in text
    assert "RF_TEST_KEY" in repr(llm)
    if code == "401":  # the server echoed the key back; it is scrubbed
        assert "***" in str(info.value)


def test_missing_key_is_named_in_the_401_error(serve, monkeypatch):
    monkeypatch.delenv("RF_TEST_KEY", raising=False)
    srv = serve(lambda prompt, attempt: "401")
    with pytest.raises(LLMError, match=r"RF_TEST_KEY \(it is NOT set\)"):
        client(srv).complete(["x"])
    assert srv.auth == {None}


class FixedHandler(FaultHandler):
    """Answers every request with one completion and finish_reason (FixedHandler.choice)."""

    choice = {"index": 0, "text": " OK", "finish_reason": "stop"}

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(200, {"choices": [self.choice]})


@pytest.mark.parametrize("code, hint", [("404", "check the base URL"), ("401", "RF_TEST_KEY")])
def test_start_up_check_names_what_to_fix(serve, code, hint):
    srv = serve(lambda prompt, attempt: code)
    with pytest.raises(LLMError, match=f"start-up check failed: HTTP {code} .*{hint}"):
        client(srv).check()
    assert sum(srv.attempts.values()) == 1  # one tiny request, not retried
    srv.RequestHandlerClass = FixedHandler
    client(srv).check()  # a healthy server passes


def test_start_up_check_of_a_server_that_is_not_up():
    llm = HTTPLLM("http://127.0.0.1:9/v1", max_retries=6, backoff=0.001, timeout=(0.5, 0.5))
    with pytest.raises(LLMError, match=r"^the actor's start-up check failed: POST http://127.0.0.1:9/v1/"
                                       r"completions failed after 3 attempts; last error: connection error: "
                                       r"ConnectionRefusedError: \[Errno 111\] Connection refused; is the "
                                       r"server up, and the URL right\?$"):  # fmt: skip
        llm.check()  # one line: the root cause, not urllib3's repr of its pool, and the hint at once


def test_build_actor_runs_the_check_and_train_exits_with_its_message(serve, tmp_path):
    import train

    srv = serve(lambda prompt, attempt: "404")
    args = [f"--out_dir={tmp_path}", "--actor=http", f"--actor_url={srv.url}", "--actor_model=nope"]
    with pytest.raises(LLMError, match="model name \\('nope'\\)"):
        train.build_actor(train.parse_config(args), "cpu")
    with pytest.raises(SystemExit, match="^error: the actor's start-up check failed: HTTP 404"):
        train.main(args)


def test_completions_cut_at_max_tokens_are_counted(serve):
    srv = serve(lambda prompt, attempt: None)
    llm = client(srv)
    llm.complete(["Task 2: tell me the secret word of room 2.\nYou are in room 2.\nThought:"] * 3)
    assert llm.finish_reasons == {"stop": 3}  # the server's own reason, or ours when we cut at a stop string

    class Cut(FixedHandler):  # a server that always stops at max_tokens
        choice = {"index": 0, "text": " I think", "finish_reason": "length"}

    srv.RequestHandlerClass = Cut
    llm.complete(["x", "y"])
    assert llm.finish_reasons == {"stop": 3, "length": 2}
