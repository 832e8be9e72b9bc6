"""`actor.py serve` never answers 5xx to client input: bad Content-Length, bodies over the cap, chat to a
model without a chat template, unknown methods and versions, and a seeded fuzz of raw bytes and of JSON
of every shape in every field; afterwards it still answers a valid request."""

import json
import random
import socket
import threading

import pytest
from test_actor_server import ckpt  # noqa: F401 - a tiny Llama with the Llama 3 chat specials
from test_train import make_tiny_retrospector

from actor import LocalLLM
from infra.server import ActorServer

VALID = {"model": "tiny", "prompt": "Task 3: the secret word.\nThought:", "max_tokens": 4, "temperature": 0}
VALID_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


class WatchedServer(ActorServer):
    """Counts what the server itself could not handle (socketserver's handle_error: a traceback)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.crashes = []

    def handle_error(self, request, client_address):
        import traceback

        self.crashes.append(traceback.format_exc())


def start(llm, **kw):
    srv = WatchedServer(llm, "tiny", port=0, **kw)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def chat_server(ckpt):  # noqa: F811
    srv = start(LocalLLM.load(ckpt), max_body_bytes=64 << 10)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    """A checkpoint whose tokenizer has no chat template (eos only), as checkpoints/tiny/actor."""
    srv = start(LocalLLM.load(make_tiny_retrospector(tmp_path_factory.mktemp("plain"))))
    yield srv
    srv.shutdown()
    srv.server_close()


def send(srv, data: bytes, timeout=30.0):
    """Raw bytes to the server, the write side then closed; -> (status or None, body)."""
    with socket.create_connection(srv.server_address, timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    if not reply.startswith(b"HTTP/"):
        return None, reply
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def post(path="/v1/completions", body=b"", headers=None, method="POST", version="HTTP/1.1") -> bytes:
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Host": "x", "Content-Length": str(len(body))} if headers is None else headers
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]["message"]


@pytest.mark.parametrize("length", ["abc", "-5", "+5", "1e3", " "])
def test_a_bad_content_length_is_400(chat_server, length):
    status, body = send(chat_server, post(body=VALID, headers={"Content-Length": length}))
    assert status == 400 and "Content-Length" in error_of(body)


def test_over_the_cap_413_chunked_411_short_body_400(chat_server):
    big = {**VALID, "prompt": "x" * (65 << 10)}
    status, body = send(chat_server, post(body=big))
    assert status == 413 and "limit of 65536 bytes" in error_of(body)
    # a body far past the socket buffers: the client is still sending when the 413 is written, and gets
    # the reply, not a reset, because the server reads and drops the rest before it closes
    for _ in range(3):
        status, body = send(chat_server, post(body=b"x" * (16 << 20)))
        assert status == 413 and "(16777216 bytes)" in error_of(body)
    status, body = send(chat_server, post(body=b"5\r\nhello\r\n0\r\n\r\n",
                                          headers={"Transfer-Encoding": "chunked"}))  # fmt: skip
    assert status == 411
    status, body = send(chat_server, post(body=b'{"a": 1}', headers={"Content-Length": "100"}))
    assert status == 400 and "ended after 8 of 100 bytes" in error_of(body)


def test_chat_to_a_model_without_a_chat_template_is_400(plain_server):
    status, body = send(plain_server, post("/v1/chat/completions", VALID_CHAT))
    msg = error_of(body)
    assert status == 400 and "no chat template" in msg and "/v1/completions" in msg
    status, _ = send(plain_server, post(body=VALID))
    assert status == 200  # the same server completes plain prompts


def test_unknown_methods_and_versions_are_4xx(chat_server):
    assert send(chat_server, post(method="PUT"))[0] == 405
    assert send(chat_server, post(method="FOO"))[0] == 405
    assert send(chat_server, post(body=VALID, version="HTTP/2.0"))[0] == 400


def random_json(rng: random.Random, depth=0):
    kinds = ["null", "bool", "int", "huge", "float", "str", "list", "dict"]
    kind = rng.choice(kinds if depth < 4 else kinds[:6])
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([-1, 0, 1, 2, 5, 17, 2**31, -(2**63)])
    if kind == "huge":
        return rng.choice([10**30, -(10**400), 1e308, -1e-320, float("inf"), float("nan")])
    if kind == "float":
        return rng.uniform(-3, 3)
    if kind == "str":
        return rng.choice(["", "x", "tiny", "user", "\ud800", "\x00", "<|eot_id|>", "é" * 50, "1"])
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["role", "content", "a", "prompt"]): random_json(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}  # fmt: skip


def fuzz_case(rng: random.Random) -> tuple[bytes, bool]:
    """(request bytes, whether a reply is owed: the HTTP framing is valid)."""
    kind = rng.randrange(6)
    if kind == 0:  # random bytes, even no request line at all
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))), False
    if kind == 1:  # a random request line and headers
        method = rng.choice(["GET", "POST", "HEAD", "DELETE", "x", "POST\x00"])
        path = rng.choice(["/v1/completions", "/v1/models", "/", "*", "/v1/chat/completions?x=1", "/%zz"])
        return post(path, random_json(rng), method=method), False
    if kind == 2:  # JSON of any shape as the body
        return post(rng.choice(["/v1/completions", "/v1/chat/completions"]), random_json(rng)), True
    if kind == 3:  # a valid request with one field of a wrong type or size
        body = dict(rng.choice([VALID, VALID_CHAT]))
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        field = rng.choice(["model", "prompt", "messages", "max_tokens", "max_completion_tokens",
                            "temperature", "top_p", "stop", "n", "stream"])  # fmt: skip
        body[field] = random_json(rng)
        if isinstance(body.get("max_tokens"), int):
            body["max_tokens"] = min(body["max_tokens"], 8)  # a valid one stays quick
        return post(path, json.dumps(body, allow_nan=True).encode()), True
    if kind == 4:  # bytes that are not UTF-8 or not JSON
        return post(body=bytes(rng.randrange(256) for _ in range(rng.randint(1, 80)))), True
    return post(body=b"[" * rng.choice([10, 10_000, 50_000])), True  # nesting deeper than the parser goes


def test_seeded_fuzz_gets_no_5xx_and_the_server_keeps_serving(chat_server):
    rng = random.Random(0)
    statuses = []
    for _ in range(600):
        data, owed = fuzz_case(rng)
        status, body = send(chat_server, data)
        assert status is None or status < 500, (data[:200], status, body[:300])
        assert status is not None or not owed, data[:200]
        statuses.append(status)
    assert chat_server.crashes == []
    assert 400 in statuses and 200 in statuses  # both bad and acceptable requests were made
    status, body = send(chat_server, post(body=VALID))
    assert status == 200 and json.loads(body)["choices"][0]["text"] is not None
    status, body = send(chat_server, post("/v1/chat/completions", VALID_CHAT))
    assert status == 200
