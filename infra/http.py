"""HTTP with retries, shared by the OpenAI-compatible actor backend and the MediaWiki client.

Rate limits (429), server errors (5xx), timeouts, refused connections and replies that cannot be read
are retried with exponential backoff and jitter, honouring Retry-After; any other status is final at
once, because retrying cannot fix a wrong URL, key or request.
"""

import email.utils
import logging
import random
import time

import requests

log = logging.getLogger("retroformer.http")


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


def request(send, read, fatal, what: str, max_retries: int, backoff: float, max_backoff: float,
            scrub=lambda s: s, error=RuntimeError):  # fmt: skip
    """read(send()) with retries. send() -> requests.Response; read(r) -> the result of a 200 reply,
    raising ValueError / KeyError / IndexError / TypeError when it is malformed (retried); fatal(r) ->
    the exception to raise for a status retrying cannot fix. `what` names the request in messages;
    scrub(text) removes secrets from them. Raises error(message) when the retries run out."""
    last = ""
    for attempt in range(max_retries + 1):
        wait = None
        try:
            r = send()
        except requests.Timeout as e:
            last = f"timed out ({e})"
        except requests.ConnectionError as e:
            last = f"connection error: {e}"
        else:
            if r.status_code == 200:
                try:
                    return read(r)
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    last = f"malformed response ({type(e).__name__}: {e}): {r.text[:200]!r}"
            elif r.status_code == 429 or r.status_code >= 500:
                last, wait = f"HTTP {r.status_code}: {error_message(r)}", retry_after(r)
            else:
                raise fatal(r)
        last = scrub(last)
        if attempt == max_retries:
            break
        if wait is None:
            wait = min(max_backoff, backoff * 2**attempt) * random.uniform(0.5, 1.0)
        log.warning("%s: %s; retry %d/%d in %.2f s", what, last, attempt + 1, max_retries, wait)
        time.sleep(wait)
    raise error(f"{what} failed after {max_retries + 1} attempts; last error: {last}")
