"""HTTP with retries, shared by the OpenAI-compatible actor backend and the MediaWiki client, and the
OpenAI protocol itself.

Every transient failure is retried with exponential backoff and jitter, honouring Retry-After: a rate
limit (429), a timeout or conflict (408, 409), a server error (5xx), a refused, reset or timed-out
connection, a reply cut short or that cannot be decoded, a 200 whose body is not the protocol's. What
retrying cannot fix is final at once: any other 4xx (a wrong URL, key or request) and a malformed URL.
The error that ends the retries is one line: the request, the last cause, and what to do.
"""

import email.utils
import http.client
import logging
import os
import random
import re
import threading
import time

import requests
import urllib3

log = logging.getLogger("retroformer.http")


class ServiceError(RuntimeError):
    """A remote service (the actor's server, the MediaWiki API) failed: retries ran out, or it refused
    the request. An episode that meets one is void, not a task failure."""


def retry_after(r: requests.Response) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    v = r.headers.get("Retry-After")
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(v).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def error_message(r: requests.Response) -> str:
    """The server's own error message: OpenAI's {"error": {"message": ...}}, else the body's start."""
    try:
        return str(r.json()["error"]["message"])[:500]
    except (ValueError, KeyError, TypeError):
        return r.text[:200]


RETRIED_4XX = (408, 409, 429)  # timeout, conflict, rate limit: the same request may succeed later
# a request that cannot be sent as it is: retrying cannot fix it
_x = requests.exceptions
FINAL = (_x.InvalidURL, _x.MissingSchema, _x.InvalidSchema, _x.InvalidHeader, _x.URLRequired,
         _x.InvalidJSONError, _x.TooManyRedirects)  # fmt: skip
# what a failure of the network or the server raises out of requests (and, should one slip through its
# wrapping, out of urllib3 and http.client)
TRANSPORT = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def innermost(e: BaseException) -> BaseException:
    """The root of an exception chain (requests -> urllib3 -> the socket's own error)."""
    seen = {id(e)}
    while True:
        nxt = getattr(e, "reason", None)  # urllib3's MaxRetryError
        if not isinstance(nxt, BaseException):
            nxt = e.__cause__ or e.__context__
        if nxt is None and e.args and isinstance(e.args[-1], BaseException):
            nxt = e.args[-1]
        if nxt is None or id(nxt) in seen:
            return e
        seen.add(id(nxt))
        e = nxt


def transport_cause(e: BaseException) -> tuple[str, str]:
    """(kind, one short line) for a failure to send a request or read its reply: the root error's own
    words, not urllib3's repr of its connection pool."""
    root = innermost(e)
    words = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*", "", str(root) or type(root).__name__)
    words = f"{type(root).__name__}: {words}" if type(root).__name__ not in words else words
    if isinstance(e, requests.Timeout) or isinstance(root, TimeoutError):
        return "timeout", f"timed out ({words})"
    if isinstance(e, requests.exceptions.ChunkedEncodingError | urllib3.exceptions.ProtocolError) and \
            isinstance(root, http.client.IncompleteRead | urllib3.exceptions.IncompleteRead):  # fmt: skip
        return "transport", f"reply cut short ({words})"
    if isinstance(e, requests.exceptions.ContentDecodingError | urllib3.exceptions.DecodeError):
        return "transport", f"reply could not be decoded ({words})"
    return "connect", f"connection error: {words}"


FIX = {
    "connect": "is the server up, and the URL right?",
    "timeout": "the server is slow or overloaded: lower the concurrency or raise the timeout",
    "transport": "the connection to the server (or a proxy on the way) is unreliable: check both",
    "status": "the server keeps failing: see its log",
    "malformed": "the server does not answer in the protocol expected: is the URL that of the right API?",
}


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def request(send, read, fatal, what: str, max_retries: int, backoff: float, max_backoff: float,
            scrub=lambda s: s, error=ServiceError):  # fmt: skip
    """read(send()) with retries. send() -> requests.Response; read(r) -> the result of a 200 reply,
    raising ValueError / KeyError / IndexError / TypeError when it is malformed (retried); fatal(r) ->
    the exception to raise for a status retrying cannot fix. `what` names the request in messages;
    scrub(text) removes secrets from them. Raises error(message) when the retries run out, or at once
    for a request that cannot be sent as it is."""
    last, kind = "", ""
    for attempt in range(max_retries + 1):
        wait = None
        try:
            r = send()
        except FINAL as e:
            cause = one_line(f"{what}: cannot be sent ({type(e).__name__}: {e}): check the URL")
            raise error(scrub(cause)) from None
        except TRANSPORT as e:
            kind, last = transport_cause(e)
        else:
            if r.status_code == 200:
                try:
                    return read(r)
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    kind, last = "malformed", f"malformed reply ({type(e).__name__}: {e}): {r.text[:200]!r}"
            elif r.status_code in RETRIED_4XX or r.status_code >= 500:
                kind, last, wait = "status", f"HTTP {r.status_code}: {error_message(r)}", retry_after(r)
            else:
                raise fatal(r)
        last = scrub(one_line(last))
        if attempt == max_retries:
            break
        if wait is None:
            wait = min(max_backoff, backoff * 2**attempt) * random.uniform(0.5, 1.0)
        log.warning("%s: %s; retry %d/%d in %.2f s", what, last, attempt + 1, max_retries, wait)
        time.sleep(wait)
    raise error(f"{what} failed after {max_retries + 1} attempts; last error: {last}; {FIX[kind]}")


class OpenAIClient:
    """POST {base_url}/completions or {base_url}/chat/completions of an OpenAI-compatible server, one
    requests.Session per thread, at most max_concurrency requests in flight. The API key (read from the
    environment variable api_key_env) is scrubbed from every message."""

    def __init__(self, base_url: str, model: str, api: str, api_key_env: str, max_concurrency: int, timeout,
                 max_retries: int, backoff: float, max_backoff: float, top_p: float = 1.0,
                 error=ServiceError):  # fmt: skip
        if api not in ("completions", "chat"):
            raise ValueError(f"HTTPLLM: api must be 'completions' or 'chat', got {api!r}")
        if max_retries < 0:
            raise ValueError(f"HTTPLLM: need max_retries >= 0, got {max_retries}")
        self.base_url, self.model, self.api, self.api_key_env = base_url.rstrip("/"), model, api, api_key_env
        self.url = f"{self.base_url}/{'chat/completions' if api == 'chat' else 'completions'}"
        self._key = os.environ.get(api_key_env) or None
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.top_p, self.error = top_p, error
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._local = threading.local()

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def complete(self, prompt: str, max_tokens: int, temperature: float, stop, max_retries=None):
        """(completion text cut at the first stop string, finish_reason)."""
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": self.top_p}
        if stop:
            body["stop"] = list(stop)
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()

        def send():
            with self._slots:
                return self._local.session.post(self.url, json=body, headers=headers, timeout=self.timeout)

        def read(r):
            choice = r.json()["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"completion text is {type(text).__name__}")
            cut = [i for i in (text.find(s) for s in stop) if i >= 0]  # servers that ignore stop
            return (text[: min(cut)], "stop") if cut else (text, choice.get("finish_reason"))

        retries = self.max_retries if max_retries is None else max_retries
        fatal = lambda r: self.error(self.scrub(one_line(self.rejected(r), 800)))
        return request(send, read, fatal, f"POST {self.url}", retries, self.backoff, self.max_backoff,
                       self.scrub, self.error)  # fmt: skip

    def check(self):
        """One tiny request, with few retries: a wrong URL, model name or key, or a server that is not up,
        raises `error` saying what to fix."""
        try:
            self.complete("Say OK.", 1, 0.0, (), max_retries=min(self.max_retries, 2))
        except self.error as e:
            raise self.error(f"the actor's start-up check failed: {e}") from None

    def rejected(self, r: requests.Response) -> str:
        """What to fix, for a status that retrying cannot."""
        msg, code = error_message(r), r.status_code
        if code in (401, 403):
            state = "set" if self._key else "NOT set"
            return (f"HTTP {code} from {self.url}: the server rejected the API key; check the environment "
                    f"variable {self.api_key_env} (it is {state}). Server said: {msg}")
        if code == 404:
            return (f"HTTP 404 from {self.url}: check the base URL ({self.base_url}) and the model name "
                    f"({self.model!r}). Server said: {msg}")
        return (f"HTTP {code} from {self.url}: the request was rejected (a prompt longer than the model's "
                f"context window? an unsupported parameter?). Server said: {msg}")
