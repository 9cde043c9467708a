"""The transport both clients share: one request per new connection, and the error types.

Every request opens its own connection. That costs little on the short paths these clients
use and means a sandbox that was frozen and thawed never trips over a kept-alive connection
the other side closed meanwhile.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import ssl
import tempfile
import time
from typing import Any, BinaryIO, Dict, Iterable, Optional, Tuple
from urllib.parse import urlsplit

__all__ = [
    "AirlockError",
    "AuthError",
    "SessionEnded",
    "TransportError",
]

USER_AGENT = "airlock-python/0.1"
_COPY_CHUNK = 256 * 1024


class AirlockError(Exception):
    """An error from the control plane, or from reaching it.

    ``status`` is the HTTP status (``None`` when no answer arrived), ``code`` the machine code
    of the ``{"error": {"code", "message"}}`` answer, ``message`` the human text.
    """

    def __init__(self, status: Optional[int], code: str, message: str):
        self.status = status
        self.code = code
        self.message = message
        prefix = f"{status} {code}" if status is not None else code
        super().__init__(f"{prefix}: {message}")


class AuthError(AirlockError):
    """401: the credential was refused (a wrong operator key, or a revoked session token)."""


class SessionEnded(AuthError):
    """The session is over: its token was revoked (401) or the session ended (410 gone).

    Nothing more can be done with this session from inside the sandbox.
    """


class TransportError(AirlockError):
    """No (complete) answer: the connection failed, broke or timed out.

    ``sent`` tells whether the request may have reached the server: ``False`` when the
    connection could not be made or the request could not be written, ``True`` when it broke
    while waiting for the answer (the server may or may not have acted on it).
    ``attempts`` is how many tries were made before giving up.
    """

    def __init__(self, message: str, sent: bool, attempts: int = 1):
        self.sent = sent
        self.attempts = attempts
        super().__init__(None, "connection_error", message)


def check_url(url: str) -> str:
    """Returns ``url`` without a trailing slash; refuses anything but http:// and https://."""
    if not isinstance(url, str) or not url:
        raise ValueError("a control plane URL is required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"only http:// and https:// URLs are supported, not {parts.scheme or 'no scheme'}://")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.username or parts.password:
        raise ValueError("credentials in the URL are not supported")
    if parts.query or parts.fragment:
        raise ValueError("a base URL takes no query or fragment")
    return url.rstrip("/")


def redact(url: str) -> str:
    """The URL without its query (presigned URLs carry their signature there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def error_from_response(status: int, body: bytes) -> AirlockError:
    """Builds the error for a non-2xx answer from its ``{"error": {...}}`` body."""
    code, message = f"http_{status}", ""
    try:
        doc = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or "")
    elif body:
        # Not ours (a proxy, an object store): keep a short, printable excerpt.
        message = body[:300].decode("utf-8", "replace").strip()
    if not message:
        message = http.client.responses.get(status, "error")
    cls = AirlockError
    if status == 401:
        cls = AuthError
    return cls(status, code, message)


def backoff_delay(attempt: int) -> float:
    """0.25 s doubling per attempt, capped at 5 s, with jitter (between half and all of it)."""
    base = min(5.0, 0.25 * (2 ** min(attempt - 1, 10)))
    return random.uniform(base / 2, base)


def open_request(
    method: str,
    url: str,
    headers: Optional[Dict[str, str]] = None,
    body: Any = None,
    timeout: float = 30.0,
) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Sends one request on a new connection and reads the answer's status and headers.

    ``body`` is bytes or a binary file object (streamed; give ``Content-Length``). The caller
    reads the body from the response and closes the connection. Raises ``TransportError``.
    """
    parts = urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context(), blocksize=_COPY_CHUNK
        )
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout, blocksize=_COPY_CHUNK)
    else:
        raise ValueError(f"only http:// and https:// URLs are supported, not {parts.scheme or 'no scheme'}://")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    hdrs = {"User-Agent": USER_AGENT}
    hdrs.update(headers or {})
    where = redact(url)
    try:
        conn.request(method, target, body=body, headers=hdrs)
    except (OSError, http.client.HTTPException) as e:
        # The server may have answered before reading the whole body (a refused upload):
        # that answer, if it arrived, says more than the broken pipe.
        resp = None
        if isinstance(e, (BrokenPipeError, ConnectionResetError)):
            try:
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException):
                resp = None
        if resp is not None:
            return conn, resp
        conn.close()
        raise TransportError(f"{method} {where}: {_describe(e)}", sent=False) from None
    try:
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise TransportError(f"{method} {where}: no answer: {_describe(e)}", sent=True) from None
    return conn, resp


def fetch(
    method: str,
    url: str,
    headers: Optional[Dict[str, str]] = None,
    body: Any = None,
    timeout: float = 30.0,
) -> Tuple[int, Dict[str, str], bytes]:
    """One request, whole answer: ``(status, headers with lower-case names, body)``."""
    conn, resp = open_request(method, url, headers, body, timeout)
    try:
        data = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise TransportError(f"{method} {redact(url)}: the answer broke off: {_describe(e)}", sent=True) from None
    finally:
        conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def save_body(resp: http.client.HTTPResponse, dest_path: str, method: str, url: str) -> int:
    """Streams a response body into ``dest_path`` (through a temporary file beside it, so a
    broken download never leaves a partial file under the final name). Returns the size."""
    dest_path = os.fspath(dest_path)
    directory = os.path.dirname(os.path.abspath(dest_path))
    fd, tmp = tempfile.mkstemp(prefix=".airlock-", suffix=".part", dir=directory)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                try:
                    chunk = resp.read(_COPY_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise TransportError(f"{method} {redact(url)}: the download broke off: {_describe(e)}", sent=True) from None
                if not chunk:
                    break
                out.write(chunk)
                size += len(chunk)
        expected = resp.getheader("Content-Length")
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise TransportError(f"{method} {redact(url)}: got {size} of {expected} bytes", sent=True)
        os.replace(tmp, dest_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return size


def json_body(data: bytes, where: str) -> Any:
    if not data:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AirlockError(None, "bad_response", f"{where}: the answer is not JSON") from None


def iter_sse(resp: http.client.HTTPResponse) -> Iterable[Dict[str, str]]:
    """Yields the frames of a ``text/event-stream`` body as ``{"id", "event", "data"}``.

    Comments (``: keep-alive``) are skipped. Ends at the end of the stream; a frame cut off
    by the end is dropped.
    """
    frame: Dict[str, str] = {}
    data_lines = []
    while True:
        line = resp.readline()
        if not line:
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if text == "":
            if data_lines:
                frame["data"] = "\n".join(data_lines)
                yield frame
            frame, data_lines = {}, []
            continue
        if text.startswith(":"):
            continue
        field, _, value = text.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data_lines.append(value)
        elif field in ("id", "event", "retry"):
            frame[field] = value


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, TimeoutError) or type(e).__name__ == "timeout":
        return "timed out"
    return text


def sleep_until_retry(attempt: int, deadline: float) -> bool:
    """Sleeps the backoff for ``attempt``; False (without sleeping) when it would pass ``deadline``."""
    delay = backoff_delay(attempt)
    if time.monotonic() + delay > deadline:
        return False
    time.sleep(delay)
    return True


def file_size(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size
