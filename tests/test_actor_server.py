"""`actor.py serve`: a tiny random Llama served over the OpenAI protocol, checked with the official
`openai` client and with HTTPLLM; LocalLLM's step-synchronous batched rollouts."""

import collections
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import threading
import time

import openai
import pytest
import requests
import torch
from conftest import random_model
from test_actor import FakeEnv

import model as M
from actor import HTTPLLM, STOP, LocalLLM, run_trials
from infra.server import ActorServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CORPUS = [
    "Thought: I should look for the word.\nAction: look\nObservation: A note says: the secret word is word3.",
    "Task 3: tell me the secret word of room 3.\nYou are in room 3.\nThought: answer[word3]",
    "Search[Apple Inc] Lookup[founded] Finish[yes] go to desk 1 open drawer 2 click[Buy Now]",
    "user assistant system Hello, how are you? The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random Llama + byte-level BPE tokenizer.json (built with `tokenizers`) in HF layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = tmp_path_factory.mktemp("tiny_actor")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
    )
    model = random_model("llama", seed=0, vocab_size=tok.get_vocab_size(), max_seq_len=512)
    M.save_pretrained(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def llm(ckpt):
    return LocalLLM.load(ckpt)


@pytest.fixture(scope="module")
def server(llm):
    srv = ActorServer(llm, "tiny", port=0)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="x", max_retries=0
    )


PROMPT = "Task 3: tell me the secret word of room 3.\nThought:"


def test_openai_client_completions_chat_models(client, llm):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    assert r.choices[0].text == llm.complete([PROMPT], max_tokens=12, stop=())[0]
    assert r.usage.prompt_tokens == len(llm.encode(PROMPT)) and 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason in ("stop", "length") and r.model == "tiny"
    msgs = [{"role": "user", "content": "Hello, how are you?"}]
    c = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
    gen = llm.generate([llm.encode_chat(msgs)], 6)[0]
    assert c.choices[0].message.content == gen.text and c.choices[0].message.role == "assistant"
    assert c.usage.prompt_tokens == len(llm.encode_chat(msgs)) and c.usage.completion_tokens == len(
        gen.tokens
    )
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_sampling_options_and_stop(client, llm):
    full = (
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0).choices[0].text
    )
    assert len(full) > 2
    stop = full[1:3]  # a string the greedy output contains: the text is cut before it
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    kw = dict(model="tiny", prompt=PROMPT, max_tokens=20, temperature=1.0, top_p=0.9)
    texts = {client.completions.create(**kw).choices[0].text for _ in range(4)}
    assert len(texts) > 1  # sampling, not greedy
    batch = client.completions.create(model="tiny", prompt=[PROMPT, "Hello"], max_tokens=5, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]


def test_errors_are_openai_style(client, server):
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        client.completions.create(model="tiny", prompt="x", n=2)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-9", prompt="x")
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
        client.completions.create(model="tiny", prompt="x", max_tokens=600)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="x", temperature=5)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[])
    base = f"http://127.0.0.1:{server.server_address[1]}"
    r = requests.post(f"{base}/v1/completions", data=b"{oops", timeout=5)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = requests.get(f"{base}/v1/engines", timeout=5)
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_concurrent_requests_are_batched(client, server, llm):
    prompts = [f"Task {i}: tell me the secret word of room {i}.\nThought:" for i in range(8)]
    before = server.n_batches
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(
            pool.map(
                lambda p: (
                    client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0)
                    .choices[0]
                    .text
                ),
                prompts,
            )
        )
    assert server.n_batches - before < len(prompts)  # requests that waited together ran together
    assert outs == [llm.complete([p], max_tokens=16, stop=())[0] for p in prompts]


def test_httpllm_rollouts_through_the_server(server, llm, tmp_path):
    http = HTTPLLM(
        f"http://127.0.0.1:{server.server_address[1]}/v1",
        model="tiny",
        context_window=512,
        tokenizer=llm.tokenizer,
        max_retries=0,
    )
    tasks = [0, 1, 2]
    log = tmp_path / "log.jsonl"
    trajs = run_trials(FakeEnv, tasks, http, log_path=log, concurrency=3, examples=[], max_tokens=24)
    # the random model does not solve anything; greedy HTTP and in-process rollouts are the same
    assert all(len(t.steps) == FakeEnv.max_steps and not t.success and t.error is None for t in trajs)
    local = run_trials(FakeEnv, tasks, llm, concurrency=1, examples=[], max_tokens=24)
    assert [t.steps for t in trajs] == [t.steps for t in local]
    assert len(log.read_text().splitlines()) == 3


def test_local_rollouts_are_step_synchronous(llm):
    calls = []
    orig = llm.generate

    def spy(prompts, *a, **kw):
        calls.append(len(prompts))
        return orig(prompts, *a, **kw)

    llm.generate = spy
    try:
        trajs = run_trials(FakeEnv, list(range(5)), llm, concurrency=4, examples=[], max_tokens=16)
    finally:
        del llm.generate
    assert calls[0] == 4 and len(calls) == 2 * FakeEnv.max_steps  # 4 together, then the 5th alone
    assert all(len(t.steps) == FakeEnv.max_steps for t in trajs)
    assert llm.context_window == 512 and llm.count_tokens(PROMPT) == len(llm.encode(PROMPT))
    with pytest.raises(ValueError, match="exceed the context window of 512"):
        llm.complete(["x" * 10], max_tokens=510, stop=STOP)


def test_serve_command_line(ckpt):
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "actor.py",
            "serve",
            "--model",
            ckpt,
            "--port",
            str(port),
            "--name",
            "cli",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.time() < deadline, "server did not start"
                time.sleep(0.2)
        assert r.json()["data"][0]["id"] == "cli"
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert isinstance(c.completions.create(model="cli", prompt="Hi", max_tokens=3).choices[0].text, str)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_local_llm_is_seeded(ckpt):
    a, b = LocalLLM.load(ckpt, seed=1), LocalLLM.load(ckpt, seed=1)
    kw = dict(max_tokens=10, temperature=1.0, stop=())
    assert a.complete([PROMPT, "Hello"], **kw) == b.complete([PROMPT, "Hello"], **kw)
    assert torch.equal(next(a.model.parameters()), next(b.model.parameters()))


def test_local_completions_cut_at_max_tokens_are_counted(ckpt):
    llm = LocalLLM.load(ckpt)  # its own counter
    gens = llm.generate([llm.encode(PROMPT)] * 2, 3, stop=("\nObservation",))
    assert llm.finish_reasons == collections.Counter(g.finish_reason for g in gens)
    assert sum(llm.finish_reasons.values()) == 2 and llm.finish_reasons["length"] == sum(
        len(g.tokens) == 3 for g in gens)  # fmt: skip


def test_serve_command_passes_its_options_to_the_loader():
    from infra import server

    seen = {}

    def load(path, **kw):
        seen.update(kw, path=path)
        raise KeyboardInterrupt  # stop before binding a port

    with pytest.raises(KeyboardInterrupt):
        server.main(load, ["serve", "--model", "m.gguf", "--device", "cpu", "--quantize", "int8",
                           "--adapter", "a.pt", "--seed", "3"])  # fmt: skip
    assert seen == dict(path="m.gguf", device="cpu", dtype=None, seed=3, quantize="int8", adapter="a.pt")
