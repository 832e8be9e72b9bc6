"""An OpenAI-compatible HTTP server for a local model (`python actor.py serve`).

One GPU machine can host the actor for many rollout workers: handler threads queue their requests,
and one worker thread takes all waiting requests and runs them as one batched generate() call per
sampling setting. `llm` is an `actor.LocalLLM` (anything with its encode, encode_chat, generate and
context_window).
"""

import argparse
import collections
import concurrent.futures
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from formats.tokenizer import CHAT_ROLES

log = logging.getLogger("retroformer.server")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class _Request:
    def __init__(self, ids, key):
        self.ids, self.key, self.future = ids, key, concurrent.futures.Future()


class ActorServer(ThreadingHTTPServer):
    """OpenAI-compatible server for a LocalLLM. Handler threads queue their requests; one worker
    thread takes all waiting requests and runs them as one generate() call per sampling setting."""

    daemon_threads = True

    def __init__(self, llm, model_name: str, host: str = "127.0.0.1", port: int = 8000,
                 max_batch: int = 64, max_body_bytes: int = 8 << 20):  # fmt: skip
        super().__init__((host, port), _Handler)
        self.llm, self.model_name, self.max_batch = llm, model_name, max_batch
        self.max_body_bytes = max_body_bytes  # 8 MiB: two million tokens of English, far past any context
        self.queue: queue.Queue = queue.Queue()
        self.n_batches = 0  # generate() calls so far
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()

    def shutdown_request(self, request):
        """Lingering close: a client still sending a body this server refused (413, 411) would get a
        reset, which can destroy the reply before the client reads it; so after closing the write side,
        read and drop what it sends, for up to 2 s, until it closes too (as Apache's lingering close)."""
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(0.5)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and request.recv(1 << 16):
                pass
        except OSError:  # reset, timed out, or already gone: nothing more to wait for
            pass
        self.close_request(request)

    def _work(self):
        while True:
            batch = [self.queue.get()]
            while batch[-1] is not None and len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            groups = collections.defaultdict(list)
            for req in batch:
                if req is not None:
                    groups[req.key].append(req)
            for (max_tokens, temperature, top_p, stop), reqs in groups.items():
                try:
                    gens = self.llm.generate([r.ids for r in reqs], max_tokens, temperature, top_p, stop)
                except Exception as e:  # noqa: BLE001 - handed to the waiting request threads
                    gens = [e] * len(reqs)
                self.n_batches += 1
                for r, g in zip(reqs, gens, strict=True):
                    r.future.set_exception(g) if isinstance(g, Exception) else r.future.set_result(g)
            if batch[-1] is None:
                return

    def server_close(self):
        self.queue.put(None)
        super().server_close()

    def completion(self, path: str, body: dict) -> dict:
        """Answer a /v1/completions or /v1/chat/completions request body (raises APIError)."""
        chat = path.endswith("/chat/completions")
        prompts, key = self._parse_request(body, chat)
        gens = self._generate(prompts, key)
        return self._response(chat, prompts, gens)

    def _parse_request(self, body, chat: bool) -> tuple[list, tuple]:
        """(token-id prompts, sampling key (max_tokens, temperature, top_p, stop)) of a valid request.
        The order of the checks decides which error a request with several faults gets."""
        self._check_body(body)
        max_tokens, temperature, top_p, stop = _sampling_settings(body, chat)
        if chat:
            messages = _chat_messages(body)
            try:
                prompts = [self.llm.encode_chat(messages)]
            except ValueError as e:  # the tokenizer has no chat template (its special tokens), or bad text
                raise APIError(400, f"the chat template cannot encode these messages: {e}. This model's "
                               "tokenizer may have no chat template: send the prompt to /v1/completions, "
                               "or serve a checkpoint whose tokenizer has one", "messages") from None
        else:
            texts = _prompt_texts(body, self.max_batch)
            try:
                prompts = [self.llm.encode(t) for t in texts]
            except ValueError as e:  # e.g. a lone surrogate escape (\ud800) in the JSON string
                raise APIError(400, f"the prompt cannot be encoded: {e}", "prompt") from None
        if any(not ids for ids in prompts):
            raise APIError(400, "the prompt is empty (no tokens)", "prompt")
        self._check_context(prompts, max_tokens)
        return prompts, (max_tokens, float(temperature), float(top_p), tuple(stop))

    def _check_body(self, body):
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        if body.get("model", self.model_name) != self.model_name:
            raise APIError(
                404,
                f"The model `{body['model']}` does not exist; this server has `{self.model_name}`",
                "model",
            )
        if body.get("n", 1) != 1:
            raise APIError(400, "only n=1 is supported", "n")
        if body.get("stream"):
            raise APIError(400, "stream=true is not supported", "stream")

    def _check_context(self, prompts: list, max_tokens: int):
        for ids in prompts:
            if len(ids) + max_tokens > self.llm.context_window:
                raise APIError(
                    400,
                    f"This model's maximum context length is {self.llm.context_window} tokens; "
                    f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}",
                    "max_tokens",
                )

    def _generate(self, prompts: list, key: tuple) -> list:
        """The worker thread's generations for `prompts`, batched with whatever else waits for `key`."""
        reqs = [_Request(ids, key) for ids in prompts]
        for r in reqs:
            self.queue.put(r)
        return [r.future.result() for r in reqs]

    def _response(self, chat: bool, prompts: list, gens: list) -> dict:
        """The OpenAI completion (or chat completion) object."""
        n_prompt, n_completion = sum(len(ids) for ids in prompts), sum(len(g.tokens) for g in gens)
        if chat:
            choices = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gens[0].text},
                    "finish_reason": gens[0].finish_reason,
                }
            ]
        else:
            choices = [
                {"index": j, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
                for j, g in enumerate(gens)
            ]
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": n_completion,
                "total_tokens": n_prompt + n_completion,
            },
        }


def _sampling_settings(body: dict, chat: bool) -> tuple:
    """(max_tokens, temperature, top_p, stop list) with OpenAI's defaults (raises APIError)."""
    max_tokens = body.get(
        "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens",
        256 if chat else 16,
    )
    temperature, top_p, stop = body.get("temperature", 1.0), body.get("top_p", 1.0), body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise APIError(400, f"max_tokens must be a positive integer, got {max_tokens!r}", "max_tokens")
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise APIError(400, f"temperature must be in [0, 2], got {temperature!r}", "temperature")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1], got {top_p!r}", "top_p")
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "stop must be a string or a list of non-empty strings", "stop")
    return max_tokens, temperature, top_p, stop


def _chat_messages(body: dict) -> list:
    msgs = body.get("messages")
    if (
        not isinstance(msgs, list)
        or not msgs
        or not all(
            isinstance(m, dict) and m.get("role") in CHAT_ROLES and isinstance(m.get("content"), str)
            for m in msgs
        )
    ):
        raise APIError(
            400,
            f"messages must be a non-empty list of {{role, content}}, role in {CHAT_ROLES}, content a string",
            "messages",
        )
    return msgs


def _prompt_texts(body: dict, most: int) -> list:
    p = body.get("prompt")
    texts = [p] if isinstance(p, str) else p
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise APIError(400, "prompt must be a string or a non-empty list of strings", "prompt")
    if len(texts) > most:
        raise APIError(400, f"at most {most} prompts per request (--max-batch), got {len(texts)}", "prompt")
    return texts


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # until a request line parses, http.server takes it for HTTP/0.9 and answers its errors without a status
    # line or headers; 1.0 gives such replies a status line a client can read
    default_request_version = "HTTP/1.0"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: ActorServer

    def log_message(self, fmt, *args):
        log.debug("%s - %s", self.address_string(), fmt % args)

    def _send(self, status: int, obj: dict):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: APIError):
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        self._send(e.status, {"error": {"message": e.message, "type": kind, "param": e.param, "code": None}})

    def __getattr__(self, name):  # any other method (PUT, DELETE, FOO): 405, not http.server's 501
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self):
        self.close_connection = True  # a body, if any, is not read
        self._error(APIError(405, f"method {self.command} is not allowed; use GET /v1/models or POST"))

    def do_GET(self):
        if self.path.split("?")[0].rstrip("/") == "/v1/models":
            model = {"id": self.server.model_name, "object": "model", "created": 0, "owned_by": "retroformer"}
            return self._send(200, {"object": "list", "data": [model]})
        self._error(APIError(404, f"unknown path {self.path}; try /v1/models"))

    def send_error(self, code, message=None, explain=None):
        # http.server answers a request line it cannot parse with 501 (unknown method) or 505 (HTTP
        # version): faults of the client, so 4xx here, as every other bad request
        code = {501: 405, 505: 400}.get(code, code)
        super().send_error(code, message, explain)

    def _read_body(self) -> bytes:
        """The request body, by its Content-Length; raises APIError (and closes the connection, whose
        unread bytes would otherwise be taken for the next request) when that cannot be done."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise APIError(411, "chunked request bodies are not supported: send a Content-Length")
        if length is None:
            return b""
        if not length.strip().isdigit():  # int() would take "-5", " 7", "1_0"
            self.close_connection = True
            raise APIError(400, f"Content-Length must be a non-negative integer, got {length[:40]!r}")
        if int(length) > self.server.max_body_bytes:
            self.close_connection = True
            raise APIError(413, f"the request body ({int(length)} bytes) is over this server's limit of "
                                f"{self.server.max_body_bytes} bytes")  # fmt: skip
        body = self.rfile.read(int(length))
        if len(body) < int(length):
            self.close_connection = True
            raise APIError(400, f"the request body ended after {len(body)} of {int(length)} bytes")
        return body

    def do_POST(self):
        path = self.path.split("?")[0].rstrip("/")
        try:
            body = self._read_body()
            if path not in ("/v1/completions", "/v1/chat/completions"):
                raise APIError(
                    404, f"unknown path {path}; this server has /v1/completions, /v1/chat/completions"
                )
            try:
                body = json.loads(body)
            except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
                raise APIError(400, "the request body is not valid JSON") from None
            self._send(200, self.server.completion(path, body))
        except APIError as e:
            self._error(e)
        except Exception as e:  # noqa: BLE001 - a bug or a failed generate(): tell the client, keep serving
            log.exception("request failed")
            self._error(APIError(500, f"internal error: {type(e).__name__}: {e}"))


def main(load, argv=None):
    """`python actor.py serve ...`: load(path, device=, dtype=, seed=, quantize=, adapter=) -> the LLM."""
    p = argparse.ArgumentParser(description="Serve a local checkpoint over the OpenAI-compatible protocol.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a local checkpoint over the OpenAI-compatible protocol")
    s.add_argument("--model", required=True, help="checkpoint folder (HF or Meta layout) or GGUF file")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--name", default=None, help="model name clients send (default: the directory name)")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    s.add_argument("--max-batch", type=int, default=64, help="most requests in one generate() call")
    s.add_argument("--max-body-mb", type=float, default=8.0, help="larger request bodies get HTTP 413")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quantize", default="", choices=["", "int8", "int4"], help="weight-only integer weights")
    s.add_argument("--adapter", default="", help="a LoRA file folded into the weights (scripts/bc_lora.py)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    llm = load(args.model, device=args.device, dtype=dtype, seed=args.seed, quantize=args.quantize,
               adapter=args.adapter)
    name = args.name or os.path.basename(os.path.normpath(args.model))
    srv = ActorServer(llm, name, args.host, args.port, args.max_batch, int(args.max_body_mb * (1 << 20)))
    log.info("serving %s as %r on http://%s:%d/v1", args.model, name, args.host, srv.server_address[1])
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
