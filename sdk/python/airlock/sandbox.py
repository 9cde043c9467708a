"""The sandbox side: what an agent inside an Airlock sandbox uses to reach the control plane.

An agent knows three things, handed to it in its environment: ``SESSION_ID``,
``SESSION_TOKEN`` and ``CONTROL_PLANE_URL``. ``SandboxClient.from_env()`` reads them once and
removes them from ``os.environ`` so that nothing the agent starts (a shell tool, a build)
inherits the token.

    from airlock.sandbox import SandboxClient

    client = SandboxClient.from_env()
    client.load_history()
    if not client.history:
        client.inbox(wait=30)          # the task; recorded in client.history
    reply = client.chat(tools=[...])   # sends only what is new since the last call
    client.add({"role": "tool", "tool_call_id": ..., "content": "..."})
    client.finish("succeeded", "done")

Every call retries connection failures, timeouts, 502/503/504 and 409 with exponential
backoff and jitter until ``retry_deadline_s`` has passed; other errors are raised at once as
``AirlockError``. A 502/504 without the API's error shape (a load balancer's own) counts as a
broken connection: the chat, the inbox and finish first check whether it was carried out. A 401 (the token was revoked: the session is over) and a 410 raise
``SessionEnded``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._http import (
    AirlockError,
    AuthError,
    SessionEnded,
    TransportError,
    check_url,
    fetch,
    file_size,
    json_body,
    open_request,
    save_body,
    sleep_until_retry,
    error_from_response,
)

__all__ = ["SandboxClient", "AirlockError", "AuthError", "SessionEnded", "TransportError", "ENV_VARS"]

ENV_VARS = ("SESSION_ID", "SESSION_TOKEN", "CONTROL_PLANE_URL")

# Statuses that mean "try again": the upstream model failed or timed out (a failed call
# stores nothing), the control plane is briefly unavailable, or another call of this session
# is still in progress.
RETRY_STATUSES = frozenset({409, 502, 503, 504})


class SandboxClient:
    """A client of the sandbox API (``CONTROL_PLANE_URL/sandbox/v1/...``).

    ``history`` is the conversation as known locally: everything loaded or sent, plus
    messages ``add()``-ed since the last ``chat()`` (not yet sent).
    """

    def __init__(
        self,
        url: str,
        token: str,
        session_id: Optional[str] = None,
        timeout: float = 30.0,
        retry_deadline_s: float = 60.0,
        chat_timeout: float = 900.0,
    ):
        self.url = check_url(url)
        if not token:
            raise ValueError("a session token is required")
        self._token = token
        self.session_id = session_id
        self.timeout = float(timeout)
        self.retry_deadline_s = float(retry_deadline_s)
        self.chat_timeout = float(chat_timeout)
        self.history: List[Dict[str, Any]] = []
        self._sent = 0  # history[:_sent] is stored on the server
        self.last_usage: Optional[Dict[str, Any]] = None
        self.session_usage: Optional[Dict[str, Any]] = None

    @classmethod
    def from_env(cls, harden: bool = True, **kwargs: Any) -> "SandboxClient":
        """Builds a client from SESSION_ID, SESSION_TOKEN and CONTROL_PLANE_URL and removes
        the three variables from ``os.environ``, so that child processes never see them.

        With ``harden`` (Linux), it also blanks their values in the environment block the
        process started with (which ``/proc/<pid>/environ`` shows even after they are unset)
        and makes the process non-dumpable, so that a tool running as the same user cannot
        read the token out of ``/proc/<pid>/environ`` or ``/proc/<pid>/mem``. Non-dumpable
        also means no core dumps and no attaching a debugger to the agent.
        """
        values = {name: os.environ.get(name) for name in ENV_VARS}
        if harden:
            _scrub_process_environment(ENV_VARS)
        for name in ENV_VARS:
            os.environ.pop(name, None)
        missing = [name for name in ("SESSION_TOKEN", "CONTROL_PLANE_URL") if not values[name]]
        if missing:
            raise AirlockError(
                None,
                "missing_environment",
                "not inside an Airlock sandbox: " + ", ".join(missing) + " not set",
            )
        return cls(values["CONTROL_PLANE_URL"], values["SESSION_TOKEN"], session_id=values["SESSION_ID"], **kwargs)

    def __repr__(self) -> str:
        return f"SandboxClient(url={self.url!r}, session_id={self.session_id!r})"

    # ------------------------------------------------------------------ inbox and history

    def inbox(self, wait: int = 30) -> List[Dict[str, Any]]:
        """Takes the user messages waiting for this session, waiting up to ``wait`` seconds
        for one (``[]`` when none came).

        The control plane appends taken messages to the conversation, so they are recorded in
        ``history`` as already sent: do not ``add()`` them again.
        """
        wait = max(0, int(wait))
        uncertain = False

        def attempt() -> List[Dict[str, Any]]:
            nonlocal uncertain
            if uncertain:
                # A lost answer may have taken messages: they are then in the history.
                server = self._fetch_history()
                if len(server) > self._sent:
                    taken = [m for m in server[self._sent:] if m.get("role") == "user"]
                    if taken:
                        self._record_taken(taken)
                        return taken
                uncertain = False
            try:
                status, doc = self._once("GET", f"/sandbox/v1/inbox?wait={wait}", timeout=wait + self.timeout)
            except TransportError as e:
                uncertain = uncertain or e.sent
                raise
            if status == 204 or not doc:
                return []
            messages = doc.get("messages") or []
            self._record_taken(messages)
            return messages

        return self._retry(attempt)

    def _record_taken(self, messages: List[Dict[str, Any]]) -> None:
        # Stored by the server after what we sent and before anything not yet sent.
        self.history[self._sent:self._sent] = messages
        self._sent += len(messages)

    def load_history(self) -> List[Dict[str, Any]]:
        """Replaces ``history`` with the conversation the control plane holds (all of it
        counts as sent). A fresh sandbox uses this to pick up where a dead one stopped."""
        messages = self._retry(self._fetch_history)
        self.history[:] = messages
        self._sent = len(messages)
        return self.history

    def _fetch_history(self) -> List[Dict[str, Any]]:
        _, doc = self._once("GET", "/sandbox/v1/history")
        messages = (doc or {}).get("messages")
        if not isinstance(messages, list):
            raise AirlockError(None, "bad_response", "GET /sandbox/v1/history: no \"messages\" list")
        return messages

    def add(self, message: Dict[str, Any]) -> None:
        """Appends a user, system or tool message to ``history``; the next ``chat()`` sends it.

        A message object that is already in ``history`` (one returned by ``inbox()``) is not
        added twice.
        """
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError("a message is a dict with a \"role\"")
        if message.get("role") == "assistant":
            raise ValueError("assistant messages come from the model (chat()), not from add()")
        if any(message is m for m in self.history):
            return
        self.history.append(message)

    @property
    def unsent(self) -> List[Dict[str, Any]]:
        """The messages ``add()``-ed since the last successful ``chat()``."""
        return self.history[self._sent:]

    # ------------------------------------------------------------------ the model

    def chat(self, tools: Optional[List[Dict[str, Any]]] = None, model: Optional[str] = None) -> Dict[str, Any]:
        """Sends the messages added since the last call and returns the model's reply (an
        assistant message, maybe with ``tool_calls``), which is appended to ``history``.

        When a call's connection breaks after the request went out, the control plane may or
        may not have stored it; the client then reads the history before sending again and
        takes the stored reply if there is one, so nothing is sent twice.
        """
        new = list(self.history[self._sent:])
        body: Dict[str, Any] = {"messages": new}
        if tools:
            body["tools"] = tools
        if model:
            body["model"] = model
        uncertain = False

        def attempt() -> Tuple[Dict[str, Any], Optional[List[Dict[str, Any]]]]:
            nonlocal uncertain
            if uncertain:
                server = self._fetch_history()
                stored = self._stored_call(server, new)
                if stored is not None:
                    return {"message": stored[-1], "usage": None, "recovered": True}, stored
                uncertain = False
            try:
                _, doc = self._once("POST", "/sandbox/v1/llm/chat", body, timeout=self.chat_timeout)
            except TransportError as e:
                uncertain = uncertain or e.sent
                raise
            except AirlockError as e:
                # 409: another call is in progress (perhaps our own lost one): look again
                # before resending once it is done.
                if e.status == 409:
                    uncertain = True
                raise
            if not isinstance(doc, dict) or not isinstance(doc.get("message"), dict):
                raise AirlockError(None, "bad_response", "POST /sandbox/v1/llm/chat: no \"message\" in the answer")
            return doc, None

        doc, server_history = self._retry(attempt)
        reply = doc["message"]
        if server_history is not None:
            self.history[:] = server_history
        else:
            self.history.append(reply)
        self._sent = len(self.history)
        self.last_usage = doc.get("usage")
        if doc.get("session_usage") is not None:
            self.session_usage = doc.get("session_usage")
        return reply

    def _stored_call(self, server: List[Dict[str, Any]], new: List[Dict[str, Any]]) -> Optional[List[Dict[str, Any]]]:
        """``server`` if it holds our call (the new messages and a reply), None if it holds
        nothing of it; raises if the conversation changed some other way."""
        base = self._sent
        if len(server) == base:
            return None
        if (
            len(server) == base + len(new) + 1
            and server[-1].get("role") == "assistant"
            and all(_same_message(a, b) for a, b in zip(server[base:base + len(new)], new))
        ):
            return server
        raise AirlockError(
            None,
            "conflict",
            f"the conversation changed on the server during a chat call (expected {base} or "
            f"{base + len(new) + 1} messages, found {len(server)}); call load_history()",
        )

    # ------------------------------------------------------------------ files

    def presign(
        self,
        name: str,
        method: str,
        size: Optional[int] = None,
        content_type: Optional[str] = None,
        expires_s: Optional[int] = None,
    ) -> Dict[str, Any]:
        """A short-lived URL for moving one file of this session: ``{"url", "method",
        "headers", "expires_at"}``."""
        body: Dict[str, Any] = {"name": name, "method": method}
        if size is not None:
            body["size"] = int(size)
        if content_type is not None:
            body["content_type"] = content_type
        if expires_s is not None:
            body["expires_s"] = int(expires_s)
        return self._retry(lambda: self._once("POST", "/sandbox/v1/files/presign", body)[1])

    def upload(self, path: str, name: Optional[str] = None, content_type: Optional[str] = None) -> Dict[str, Any]:
        """Uploads a local file as the session's file ``name`` (default: its base name),
        streaming it from disk. Returns ``{"name", "size"}``."""
        path = os.fspath(path)
        name = name or os.path.basename(path)
        with open(path, "rb") as f:
            size = file_size(f)
        grant = self.presign(name, "PUT", size=size, content_type=content_type)
        url = grant["url"]
        check_url_scheme(url)
        headers = {str(k): str(v) for k, v in (grant.get("headers") or {}).items()}
        headers["Content-Length"] = str(size)
        if content_type and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = content_type

        def attempt() -> Dict[str, Any]:
            with open(path, "rb") as f:
                if file_size(f) != size:
                    raise AirlockError(None, "file_changed", f"{path} changed size during the upload")
                status, _, data = fetch(grant.get("method", "PUT"), url, headers, f, self.timeout)
            if not 200 <= status < 300:
                raise self._error(status, data)
            return {"name": name, "size": size}

        return self._retry(attempt)

    def download(self, name: str, dest_path: str) -> int:
        """Downloads the session's file ``name`` into ``dest_path``; returns its size."""
        grant = self.presign(name, "GET")
        url = grant["url"]
        check_url_scheme(url)
        headers = {str(k): str(v) for k, v in (grant.get("headers") or {}).items()}

        def attempt() -> int:
            conn, resp = open_request("GET", url, headers, None, self.timeout)
            try:
                if not 200 <= resp.status < 300:
                    raise self._error(resp.status, resp.read())
                return save_body(resp, dest_path, "GET", url)
            finally:
                conn.close()

        return self._retry(attempt)

    # ------------------------------------------------------------------ events and the end

    def event(self, type: str, data: Optional[Dict[str, Any]] = None) -> Optional[int]:
        """Records an event (``agent.*`` and the like) for the operator; returns its seq."""
        body = {"type": type, "data": data if data is not None else {}}
        doc = self._retry(lambda: self._once("POST", "/sandbox/v1/events", body)[1])
        return doc.get("seq") if isinstance(doc, dict) else None

    def finish(self, status: str = "succeeded", result: Optional[str] = None) -> Dict[str, Any]:
        """Ends the session; the control plane then destroys the sandbox and revokes the token."""
        if status not in ("succeeded", "failed"):
            raise ValueError("status must be \"succeeded\" or \"failed\"")
        body: Dict[str, Any] = {"status": status}
        if result is not None:
            body["result"] = result
        uncertain = False

        def attempt() -> Dict[str, Any]:
            nonlocal uncertain
            try:
                return self._once("POST", "/sandbox/v1/finish", body)[1] or {}
            except TransportError as e:
                uncertain = uncertain or e.sent
                raise
            except SessionEnded:
                # A finish whose answer was lost revoked the token: it did happen.
                if uncertain:
                    return {"id": self.session_id, "state": status}
                raise

        return self._retry(attempt)

    # ------------------------------------------------------------------ plumbing

    def _once(self, method: str, path: str, body: Any = None, timeout: Optional[float] = None) -> Tuple[int, Any]:
        """One request to the control plane: ``(status, parsed JSON)`` for 2xx, else raises."""
        headers = {"Authorization": "Bearer " + self._token, "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        url = self.url + path
        status, _, raw = fetch(method, url, headers, data, timeout if timeout is not None else self.timeout)
        if not 200 <= status < 300:
            err = self._error(status, raw)
            if status in (502, 504) and err.code == f"http_{status}":
                # Not the control plane's answer (it always sends its error shape) but that of a
                # proxy in between (a load balancer in front of replicas), which may have
                # forwarded the request to a replica that died before answering: as unknown as
                # a connection that broke after the request went out.
                raise TransportError(f"{method} {path.split('?')[0]}: {status} from a proxy: {err.message}", sent=True)
            raise err
        return status, json_body(raw, f"{method} {path.split('?')[0]}")

    @staticmethod
    def _error(status: int, raw: bytes) -> AirlockError:
        err = error_from_response(status, raw)
        if status == 401:
            return SessionEnded(status, err.code, err.message + " (the session token is no longer valid: the session is over)")
        if status == 410:
            return SessionEnded(status, err.code, err.message)
        return err

    def _retry(self, attempt: Callable[[], Any]) -> Any:
        """Runs ``attempt`` until it succeeds, retrying what is worth retrying with
        exponential backoff and jitter until ``retry_deadline_s`` has passed."""
        deadline = time.monotonic() + self.retry_deadline_s
        tries = 0
        while True:
            tries += 1
            try:
                return attempt()
            except TransportError as e:
                if not sleep_until_retry(tries, deadline):
                    raise TransportError(
                        f"{e.message} (gave up after {tries} attempt{'s' if tries > 1 else ''})", e.sent, tries
                    ) from None
            except AirlockError as e:
                if e.status not in RETRY_STATUSES or not sleep_until_retry(tries, deadline):
                    raise


def _scrub_process_environment(names: Tuple[str, ...]) -> None:
    """Best effort: zero the values of ``names`` in the C environment and mark the process
    non-dumpable (Linux, through ctypes; silently nothing elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        getenv = libc.getenv
        getenv.restype = ctypes.c_void_p
        getenv.argtypes = [ctypes.c_char_p]
        for name in names:
            value = getenv(name.encode())
            if value:
                ctypes.memset(value, 0, len(ctypes.string_at(value)))
        pr_set_dumpable = 4
        libc.prctl(pr_set_dumpable, 0, 0, 0, 0)
    except (OSError, AttributeError, ValueError):
        pass


def check_url_scheme(url: str) -> None:
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise AirlockError(None, "bad_response", "the presigned URL is not http:// or https://")


def _same_message(stored: Dict[str, Any], sent: Dict[str, Any]) -> bool:
    if stored.get("role") != sent.get("role"):
        return False
    if stored.get("tool_call_id") != sent.get("tool_call_id"):
        return False
    a, b = stored.get("content"), sent.get("content")
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return True

