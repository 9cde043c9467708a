"""The operator side: start sessions, talk to them, watch them, fetch their files.

    from airlock.operator import OperatorClient

    op = OperatorClient()                       # $AIRLOCK_URL / $AIRLOCK_OPERATOR_KEY, or
                                                # http://127.0.0.1:7400 and <home>/operator.key
    s = op.create_session("Summarise README.md")
    for ev in op.events(s["id"]):               # follows the session until it ends
        print(ev["seq"], ev["type"], ev["data"])
    print(op.get_session(s["id"])["result"])

Errors are raised as ``AirlockError(status, code, message)``; a refused key as ``AuthError``.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import quote, urlencode, urljoin, urlsplit

from ._http import (
    AirlockError,
    AuthError,
    TransportError,
    check_url,
    error_from_response,
    fetch,
    iter_sse,
    json_body,
    open_request,
    save_body,
    sleep_until_retry,
)

__all__ = ["OperatorClient", "AirlockError", "AuthError", "TransportError", "TERMINAL_STATES", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:7400"
TERMINAL_STATES = frozenset({"succeeded", "failed", "killed"})
_MAX_REDIRECTS = 5


def default_home() -> str:
    home = os.environ.get("AIRLOCK_HOME")
    if home:
        return home
    return os.path.join(os.path.expanduser("~"), ".local", "share", "airlock")


class OperatorClient:
    """A client of the operator API.

    ``url`` defaults to ``$AIRLOCK_URL``, else ``http://127.0.0.1:7400``. ``key`` defaults to
    ``$AIRLOCK_OPERATOR_KEY``, else the first line of ``<home>/operator.key``, where ``home``
    is the argument, else ``$AIRLOCK_HOME``, else ``~/.local/share/airlock``.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        key: Optional[str] = None,
        home: Optional[str] = None,
        timeout: float = 60.0,
        retry_deadline_s: float = 60.0,
    ):
        self.url = check_url(url or os.environ.get("AIRLOCK_URL") or DEFAULT_URL)
        self.timeout = float(timeout)
        self.retry_deadline_s = float(retry_deadline_s)
        self._key = key or os.environ.get("AIRLOCK_OPERATOR_KEY") or None
        self._key_source = "the key given" if key else "$AIRLOCK_OPERATOR_KEY"
        self._key_file = os.path.join(home or default_home(), "operator.key")
        if not self._key:
            self._key_source = self._key_file

    def __repr__(self) -> str:
        return f"OperatorClient(url={self.url!r})"

    # ------------------------------------------------------------------ sessions

    def create_session(
        self,
        task: str,
        image: Optional[str] = None,
        command: Optional[List[str]] = None,
        model: Optional[str] = None,
        models: Optional[List[str]] = None,
        backend: Optional[str] = None,
        limits: Optional[Dict[str, Any]] = None,
        metadata: Optional[Dict[str, Any]] = None,
        env: Optional[Dict[str, str]] = None,
        files: Optional[Dict[str, Any]] = None,
        egress: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Starts a session working on ``task``; returns the session object.

        ``env`` and ``files`` are the work going in (non-secret variables, and files for the
        agent's working directory: text, or ``{"base64": ...}``); ``egress`` what the sandbox
        may reach: ``{"policy": NAME}`` or ``{"allow": [...], "allow_addresses": [...]}``
        within the operator's ``[egress]``, either with ``"secrets": [NAME, ...]`` of the
        operator's ``[secrets.NAME]``, which the gateway adds for their hosts (docs/api.md)."""
        body: Dict[str, Any] = {"task": task}
        for name, value in (
            ("image", image),
            ("command", command),
            ("model", model),
            ("models", models),
            ("backend", backend),
            ("limits", limits),
            ("metadata", metadata),
            ("env", env),
            ("files", files),
            ("egress", egress),
        ):
            if value is not None:
                body[name] = list(value) if name in ("command", "models") else value
        return self._json("POST", "/v1/sessions", body)

    def get_session(self, id: str) -> Dict[str, Any]:
        return self._json("GET", self._session_path(id))

    def list_sessions(self, state: Optional[str] = None, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """Sessions, newest first."""
        query = {}
        if state is not None:
            query["state"] = state
        if limit is not None:
            query["limit"] = str(int(limit))
        path = "/v1/sessions" + ("?" + urlencode(query) if query else "")
        return self._json("GET", path).get("sessions", [])

    def send_message(self, id: str, content: str) -> Dict[str, Any]:
        """A follow-up from the user; resumes (or restarts) the session's sandbox if needed."""
        return self._json("POST", self._session_path(id) + "/messages", {"content": content}) or {}

    def messages(self, id: str) -> List[Dict[str, Any]]:
        """The session's conversation as the control plane stores it."""
        return self._json("GET", self._session_path(id) + "/messages").get("messages", [])

    def suspend(self, id: str, mode: str = "pause") -> Dict[str, Any]:
        """Moves the session to an idle tier: "pause" (memory kept, wakes in
        milliseconds) or "hibernate" (a microvm's memory goes to disk; an oci
        sandbox is let go and a fresh one carries on at wake). A message or
        resume() wakes either."""
        return self._json("POST", self._session_path(id) + "/suspend", {"mode": mode})

    def resume(self, id: str) -> Dict[str, Any]:
        return self._json("POST", self._session_path(id) + "/resume")

    def kill(self, id: str) -> Dict[str, Any]:
        """Destroys the sandbox and revokes its token; history and files stay."""
        return self._json("DELETE", self._session_path(id))

    def logs(self, id: str) -> str:
        """The sandbox's captured stdout and stderr."""
        _, _, data = self._fetch("GET", self._session_path(id) + "/logs", accept="text/plain")
        return data.decode("utf-8", "replace")

    def usage(self, since: Any = None, until: Any = None) -> Dict[str, Any]:
        """Metered LLM use; ``since``/``until`` are RFC 3339 strings or epoch milliseconds."""
        query = {k: str(v) for k, v in (("since", since), ("until", until)) if v is not None}
        return self._json("GET", "/v1/usage" + ("?" + urlencode(query) if query else ""))

    # ------------------------------------------------------------------ events

    def events(self, id: str, after: int = 0, follow: bool = True) -> Iterator[Dict[str, Any]]:
        """The session's events ``{"seq", "type", "data", "created_at"}`` after ``after``.

        With ``follow`` the generator follows the live stream, reconnecting where it left off
        when the connection drops, and ends once the session has ended and every event is
        delivered. Without it, yields the events stored now and ends.
        """
        return self._events(id, int(after), follow, None)

    def wait(self, id: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Waits until the session has ended; returns the final session object. Raises
        ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        session = self.get_session(id)
        if session.get("state") in TERMINAL_STATES:
            return session
        for _ in self._events(id, 0, True, deadline):
            pass
        session = self.get_session(id)
        if session.get("state") not in TERMINAL_STATES:
            raise AirlockError(None, "bad_response", f"the event stream of {id} ended before the session did")
        return session

    def _events(self, id: str, after: int, follow: bool, deadline: Optional[float]) -> Iterator[Dict[str, Any]]:
        path = self._session_path(id) + "/events"
        if not follow:
            yield from self._stored_events(path, after)
            return
        last = after
        failures = 0
        give_up = None
        while True:
            timeout = 60.0  # the server sends a keep-alive every 15 s
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"session {id} did not end in time")
                timeout = max(0.05, min(timeout, left))
            headers = self._headers()
            headers["Accept"] = "text/event-stream"
            url = self.url + path + f"?after={last}"
            try:
                conn, resp = open_request("GET", url, headers, None, timeout)
            except TransportError as e:
                failures += 1
                give_up = give_up or time.monotonic() + self.retry_deadline_s
                if not sleep_until_retry(failures, give_up if deadline is None else min(give_up, deadline)):
                    if deadline is not None and time.monotonic() >= deadline - 0.01:
                        raise TimeoutError(f"session {id} did not end in time") from None
                    raise TransportError(f"{e.message} (gave up after {failures} attempts)", e.sent, failures) from None
                continue
            try:
                if resp.status != 200:
                    raise self._error(resp.status, resp.read())
                failures, give_up = 0, None
                try:
                    for frame in iter_sse(resp):
                        try:
                            ev = json.loads(frame["data"])
                        except ValueError:
                            continue
                        if not isinstance(ev, dict):
                            continue
                        seq = ev.get("seq")
                        if isinstance(seq, int):
                            if seq <= last:
                                continue
                            last = seq
                        yield ev
                except (OSError, ValueError, http.client.HTTPException):
                    pass  # a dropped or timed-out stream: reconnect from the last seq
            finally:
                conn.close()
            # The stream ended. Done when the session has ended; pick up anything the cut
            # may have lost first.
            try:
                state = self.get_session(id).get("state")
            except TransportError:
                state = None
            if state in TERMINAL_STATES:
                for ev in self._stored_events(path, last):
                    last = ev.get("seq", last)
                    yield ev
                return

    def _stored_events(self, path: str, after: int) -> Iterator[Dict[str, Any]]:
        page = 1000
        while True:
            _, _, data = self._fetch("GET", f"{path}?after={after}&limit={page}")
            events = json_body(data, "GET events")
            if isinstance(events, dict):
                events = events.get("events", [])
            if not isinstance(events, list):
                raise AirlockError(None, "bad_response", "GET events: not a JSON array")
            for ev in events:
                seq = ev.get("seq") if isinstance(ev, dict) else None
                if isinstance(seq, int):
                    after = max(after, seq)
                yield ev
            if len(events) < page:
                return

    # ------------------------------------------------------------------ files

    def list_files(self, id: str) -> List[Dict[str, Any]]:
        """The session's files: ``[{"name", "size", "created_at"}]``."""
        return self._json("GET", self._session_path(id) + "/files").get("files", [])

    def download_file(self, id: str, name: str, dest_path: str) -> int:
        """Downloads the session's file ``name`` into ``dest_path``; returns its size.

        A redirect to a presigned URL is followed without the operator key."""
        url = self.url + self._session_path(id) + "/files/" + quote(name, safe="")
        headers = self._headers()
        for _ in range(_MAX_REDIRECTS + 1):
            conn, resp = open_request("GET", url, headers, None, self.timeout)
            try:
                if resp.status in (301, 302, 303, 307, 308):
                    location = resp.getheader("Location")
                    resp.read()
                    if not location:
                        raise AirlockError(resp.status, "bad_response", "a redirect without a Location")
                    url = urljoin(url, location)
                    if urlsplit(url).scheme not in ("http", "https"):
                        raise AirlockError(resp.status, "bad_response", "a redirect to a URL that is not http(s)")
                    # The presigned URL is the credential: the key never leaves for it.
                    headers = {}
                    continue
                if resp.status != 200:
                    raise self._error(resp.status, resp.read())
                return save_body(resp, dest_path, "GET", url)
            finally:
                conn.close()
        raise AirlockError(None, "bad_response", f"too many redirects fetching {name}")

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _session_path(id: str) -> str:
        if not isinstance(id, str) or not id:
            raise ValueError("a session id is required")
        return "/v1/sessions/" + quote(id, safe="")

    def _operator_key(self) -> str:
        if not self._key:
            try:
                with open(self._key_file, "r", encoding="utf-8") as f:
                    self._key = f.readline().strip()
            except OSError as e:
                raise AuthError(
                    None,
                    "no_operator_key",
                    f"no operator key: pass key=, set AIRLOCK_OPERATOR_KEY, or make {self._key_file} readable "
                    f"(`airlock serve` writes it on first start): {e.strerror or e}",
                ) from None
            if not self._key:
                raise AuthError(None, "no_operator_key", f"{self._key_file} is empty")
        return self._key

    def _headers(self) -> Dict[str, str]:
        return {"Authorization": "Bearer " + self._operator_key()}

    def _error(self, status: int, raw: bytes) -> AirlockError:
        err = error_from_response(status, raw)
        if status == 401:
            return AuthError(
                status, err.code, f"{err.message} (the control plane at {self.url} refused the operator key from {self._key_source})"
            )
        return err

    def _fetch(self, method: str, path: str, body: Any = None, accept: str = "application/json"):
        headers = self._headers()
        headers["Accept"] = accept
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        status, hdrs, raw = fetch(method, self.url + path, headers, data, self.timeout)
        if not 200 <= status < 300:
            raise self._error(status, raw)
        return status, hdrs, raw

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        _, _, raw = self._fetch(method, path, body)
        doc = json_body(raw, f"{method} {path.split('?')[0]}")
        return doc if doc is not None else {}
