"""Client: Epoch's v1 HTTP API from Python (standard library only).

Every endpoint, parameter and field here is the one epochd serves (api/routes_*.cc);
see clients/python/README.md for the calls and their semantics.
"""

import codecs
import os
import ssl
import threading
import time
import urllib.parse

from . import _http
from .errors import (EpochConnectionError, EpochError, EpochTimeoutError, NotFoundError,
                     RangeNotSatisfiableError, TooManyRequestsError, UnavailableError)

__all__ = ["Client", "Follow", "DEFAULT_SERVER", "RUN_TERMINAL_STATES",
           "ATTEMPT_TERMINAL_STATES"]

#: epochctl's default (api/client/client.h kDefaultServer).
DEFAULT_SERVER = "https://127.0.0.1:30745"
#: A run in one of these states has ended (engine/state.cc IsTerminal).
RUN_TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
#: An attempt in one of these states has ended.
ATTEMPT_TERMINAL_STATES = frozenset({"succeeded", "failed", "timed_out", "cancelled", "lost"})
#: The events that end a run.
_RUN_END_EVENTS = frozenset({"RunSucceeded", "RunFailed", "RunCancelled"})
#: A log event longer than this is part of a longer line (api/routes_logs.cc kLogBlock).
_LOG_BLOCK = 64 << 10


def _q(segment):
    return urllib.parse.quote(str(segment), safe="")


def _path(base, query):
    items = [(k, v) for k, v in query if v is not None and v != ""]
    if not items:
        return base
    return base + "?" + urllib.parse.urlencode(
        [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in items])


def _labels_query(labels):
    """labels: {"k": "v"} or ["k=v", ...] -> [("label", "k=v"), ...]."""
    if not labels:
        return []
    if isinstance(labels, dict):
        return [("label", "%s=%s" % (k, v)) for k, v in labels.items()]
    return [("label", str(item)) for item in labels]


class Client:
    """A client of one Epoch cluster.

    url: the API's base URL, or several separated by commas (a leader and its
      standbys: each is tried in turn on a connection failure or a 503); default
      ``$EPOCH_SERVER``, else ``https://127.0.0.1:30745`` (as epochctl).
    token: the bearer token; default ``$EPOCH_TOKEN``.
    ca_file: a PEM file to verify an https server with (epochd's generated certificate
      is ``<data-dir>/tls/cert.pem``); default ``<data_dir>/tls/cert.pem`` when
      ``data_dir`` (or ``$EPOCH_DATA_DIR``) is given and has one, else the system CAs.
    insecure: https without verifying the certificate.
    timeout: seconds to connect and to wait for each answer.
    stream_timeout: seconds a followed stream may stay silent before it counts as
      broken (epochd sends a keep-alive comment after 15 s of silence).
    """

    def __init__(self, url=None, token=None, ca_file=None, insecure=False, timeout=30.0,
                 data_dir=None, stream_timeout=60.0, max_redirects=5):
        if url is None:
            url = os.environ.get("EPOCH_SERVER") or DEFAULT_SERVER
        if token is None:
            token = os.environ.get("EPOCH_TOKEN") or None
        if data_dir is None:
            data_dir = os.environ.get("EPOCH_DATA_DIR") or None
        if ca_file is None and data_dir:
            cert = os.path.join(data_dir, "tls", "cert.pem")
            if os.path.exists(cert):
                ca_file = cert
        self.servers = _http.split_servers(url)
        self.ca_file = ca_file
        self.insecure = bool(insecure)
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        ctx = None
        if any(s.startswith("https://") for s in self.servers):
            if self.insecure:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                ctx = ssl.create_default_context(cafile=ca_file)
        self._http = _http.Transport(self.servers, token=token, ssl_context=ctx,
                                     timeout=timeout, max_redirects=max_redirects)
        self._status = threading.local()

    # ---- plumbing ----------------------------------------------------------------

    @property
    def url(self):
        """The server that answered last (the first one given before any answer)."""
        return self._http.preferred or self.servers[0]

    @property
    def last_status(self):
        """The HTTP status of this thread's last answer (201 created vs 200 for an
        idempotent repeat of a submit or registration)."""
        return getattr(self._status, "value", None)

    def close(self):
        """Closes this thread's kept-alive connections."""
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method, path, body=None, headers=None, accept_status=()):
        """A raw call (path with its query): returns the parsed JSON answer, or the text
        of an answer that is not JSON (GET /metrics). Raises EpochError."""
        reply = self._http.request(method, path, body=body, headers=headers,
                                   accept_status=accept_status)
        self._status.value = reply.status
        ctype = reply.headers.get("content-type", "application/json")
        if not ctype.lower().startswith("application/json"):
            return reply.body.decode("utf-8", "replace")
        return reply.json()

    def _get(self, path):
        return self.request("GET", path)

    def _post(self, path, body=None, headers=None):
        return self.request("POST", path, body={} if body is None else body, headers=headers)

    # ---- health and cluster ------------------------------------------------------

    def health(self):
        """GET /healthz: {"status": "ok"} (no token needed)."""
        return self._get("/healthz")

    def ready(self):
        """GET /readyz: {"ready", "role", "epoch"}; answered whether ready (200) or
        not (503), without raising."""
        return self.request("GET", "/readyz", accept_status=(503,))

    def cluster(self):
        """GET /v1/cluster: role, epoch, leader, head position, history check, ..."""
        return self._get("/v1/cluster")

    def containers(self):
        """GET /v1/containers: the compute containers and their attempts."""
        return self._get("/v1/containers")

    # ---- workflows ---------------------------------------------------------------

    def register_workflow(self, definition, idempotency_key=None):
        """POST /v1/workflows: registers a definition (a dict). Returns
        {"name", "version", "digest"}; last_status is 201 when it made a new version,
        200 when the definition was already the latest."""
        return self._post("/v1/workflows", definition,
                          headers={"Idempotency-Key": idempotency_key})

    def list_workflows(self):
        """GET /v1/workflows: {"items": [...], "next_cursor": null}."""
        return self._get("/v1/workflows")

    def get_workflow(self, name, version=None):
        """GET /v1/workflows/{name}[/versions/{version}]."""
        path = "/v1/workflows/" + _q(name)
        if version is not None:
            path += "/versions/%d" % int(version)
        return self._get(path)

    # ---- runs --------------------------------------------------------------------

    def submit_run(self, workflow=None, params=None, labels=None, priority=None,
                   version=None, definition=None, idempotency_key=None):
        """POST /v1/runs: submits a run of a registered workflow (its latest version,
        or ``version``), or of an inline ``definition``. ``labels``: {str: str};
        ``priority``: an integer in [-1000, 1000]; ``idempotency_key``: the
        Idempotency-Key header (the same key with the same request answers the first
        run, forever; with another request: 422 idempotency_key_reused). Returns the
        run (last_status 201 created, 200 for a repeat)."""
        body = {}
        if definition is not None:
            body["definition"] = definition
        if workflow is not None:
            body["workflow"] = workflow
        if version is not None:
            body["version"] = version
        if params is not None:
            body["params"] = params
        if labels is not None:
            body["labels"] = labels
        if priority is not None:
            body["priority"] = priority
        return self._post("/v1/runs", body, headers={"Idempotency-Key": idempotency_key})

    def get_run(self, run_id):
        """GET /v1/runs/{id}: the run, its steps and their attempts."""
        return self._get("/v1/runs/" + _q(run_id))

    def run_history(self, run_id):
        """GET /v1/runs/{id}/history: the run's events as readable lines."""
        return self._get("/v1/runs/%s/history" % _q(run_id))

    def cancel_run(self, run_id):
        """POST /v1/runs/{id}/cancel; returns the run (202)."""
        return self._post("/v1/runs/%s/cancel" % _q(run_id))

    def retry_run(self, run_id):
        """POST /v1/runs/{id}/retry: re-runs what did not succeed; returns the run."""
        return self._post("/v1/runs/%s/retry" % _q(run_id))

    def list_runs(self, state=None, workflow=None, labels=None, limit=None, cursor=None):
        """GET /v1/runs: one page, newest first: {"items": [...], "next_cursor": str or
        None}. ``state``: queued|running|succeeded|failed|cancelled; ``labels``: a run
        must carry every one ({"k": "v"} or ["k=v"]); ``limit`` 1..1000 (default 100);
        ``cursor``: the next_cursor of the page before."""
        query = [("state", state), ("workflow", workflow)] + _labels_query(labels)
        query += [("limit", limit), ("cursor", cursor)]
        return self._get(_path("/v1/runs", query))

    def iter_runs(self, state=None, workflow=None, labels=None, page_size=None):
        """Every run that matches, newest first, a page at a time (a generator)."""
        cursor = None
        while True:
            page = self.list_runs(state=state, workflow=workflow, labels=labels,
                                  limit=page_size, cursor=cursor)
            for item in page.get("items") or []:
                yield item
            cursor = page.get("next_cursor")
            if cursor is None:
                return

    def wait_run(self, run_id, timeout=None, poll_interval=0.1, max_poll_interval=1.0):
        """Waits until the run has ended (succeeded, failed or cancelled) and returns
        it. Follows the run's event stream (GET /v1/runs/{id}/events?follow=true, SSE)
        and re-reads the run when it ends; when streaming is refused or breaks it polls
        with backoff (poll_interval doubling up to max_poll_interval). Raises
        EpochTimeoutError (with .run, the last state seen) after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = poll_interval
        last_position = None
        run = None

        def remaining():
            return None if deadline is None else deadline - time.monotonic()

        def expired():
            r = remaining()
            return r is not None and r <= 0

        while True:
            try:
                run = self.get_run(run_id)
                if run.get("state") in RUN_TERMINAL_STATES:
                    return run
            except (EpochConnectionError, UnavailableError):
                pass
            if expired():
                raise EpochTimeoutError(
                    "run %s did not end within %ss (state %s)"
                    % (run_id, timeout, run.get("state") if run else "unknown"), run=run)
            saw_end = False
            try:
                headers = {}
                if last_position is not None:
                    headers["Last-Event-ID"] = str(last_position)
                wait = self.stream_timeout
                r = remaining()
                if r is not None:
                    wait = max(0.05, min(wait, r))
                stream = self._http.request(
                    "GET", "/v1/runs/%s/events?follow=true" % _q(run_id), headers=headers,
                    timeout=wait, stream=True)
                try:
                    for ev in _http.sse_events(stream.chunks()):
                        if ev.id is not None:
                            last_position = int(ev.id)
                        if ev.event in _RUN_END_EVENTS:
                            saw_end = True
                            break
                except _http.StreamBroken:
                    pass
                finally:
                    stream.close()
            except (EpochConnectionError, UnavailableError, TooManyRequestsError):
                pass
            if not saw_end:
                # No stream (refused, or no server) or a broken one: back off.
                r = remaining()
                nap = backoff if r is None else max(0.0, min(backoff, r))
                time.sleep(nap)
                backoff = min(backoff * 2, max_poll_interval)

    # ---- logs --------------------------------------------------------------------

    def _logs_path(self, run_id, step, query):
        return _path("/v1/runs/%s/steps/%s/logs" % (_q(run_id), _q(step)), query)

    def logs_bytes(self, run_id, step, attempt=None, tail=None):
        """A step attempt's log as bytes (see logs)."""
        if tail is not None:
            reply = self._http.request("GET", self._logs_path(
                run_id, step, [("attempt", attempt), ("tail", int(tail))]))
            return reply.body
        path = self._logs_path(run_id, step, [("attempt", attempt)])
        reply = self._http.request("GET", path)
        offset = int(reply.headers.get("epoch-log-offset") or 0)
        if offset == 0:
            return reply.body
        # Larger than one answer (api.maxLogResponseBytes): read it from the start by
        # Range, a part at a time.
        size = int(reply.headers.get("epoch-log-size") or 0)
        parts, pos = [], 0
        while pos < size:
            part = self._http.request("GET", path,
                                      headers={"Range": "bytes=%d-%d" % (pos, size - 1)})
            if part.status != 206 or not part.body:
                break
            parts.append(part.body)
            pos += len(part.body)
        return b"".join(parts)

    def logs(self, run_id, step, attempt=None, tail=None):
        """GET /v1/runs/{id}/steps/{step}/logs: a step attempt's stdout+stderr as text
        (``attempt``: default the last; ``tail``: only the last N lines). A log larger
        than the server answers at once is read whole by Range."""
        return self.logs_bytes(run_id, step, attempt, tail).decode("utf-8", "replace")

    def follow_logs(self, run_id, step, attempt=None, tail=None, reconnect_timeout=60.0):
        """Follows a step attempt's log until the attempt has ended: an iterator (a
        Follow) that yields text as the step writes it, a line at a time. ``attempt``:
        default the last one when called (waiting for the step's first attempt if it
        has none yet); ``tail``: start with the last N lines instead of the beginning.
        Streams GET .../logs?follow=true (SSE); if that stream breaks, it goes on from
        the byte it had reached by Range reads (exact, no gaps), polling until the
        attempt has ended. (With ``tail`` the starting byte is unknown, so a break then
        raises EpochConnectionError.)"""
        return Follow(self, lambda f: self._follow_logs(f, run_id, step, attempt, tail),
                      reconnect_timeout)

    def _resolve_attempt(self, f, run_id, step, attempt):
        """The attempt number to follow (and whether it has ended)."""
        nap = 0.1
        while True:
            run = f._call(lambda: self.get_run(run_id))
            steps = [s for s in run.get("steps") or [] if s.get("name") == step]
            if not steps:
                raise NotFoundError("run '%s' has no step '%s'" % (run_id, step),
                                    status=404, code="not_found")
            attempts = steps[0].get("attempts") or []
            if attempt is not None:
                if attempt > len(attempts) and run.get("state") not in RUN_TERMINAL_STATES:
                    pass  # not made yet: wait for it
                else:
                    return attempt
            elif attempts:
                return attempts[-1]["attempt"]
            elif run.get("state") in RUN_TERMINAL_STATES:
                # Ended without running the step: the API says why (404).
                self._http.request("GET", self._logs_path(run_id, step, []))
                raise NotFoundError("step '%s' has not run" % step, status=404,
                                    code="not_found")
            if f.closed:
                return None
            time.sleep(nap)
            nap = min(nap * 2, 1.0)

    def _attempt_ended(self, f, run_id, step, attempt):
        run = f._call(lambda: self.get_run(run_id))
        for s in run.get("steps") or []:
            if s.get("name") == step:
                for a in s.get("attempts") or []:
                    if a.get("attempt") == attempt:
                        return a.get("state") in ATTEMPT_TERMINAL_STATES
        return run.get("state") in RUN_TERMINAL_STATES

    def _follow_logs(self, f, run_id, step, attempt, tail):
        number = self._resolve_attempt(f, run_id, step, attempt)
        if number is None:
            return
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        offset = 0 if tail is None else None  # the byte reached, when known
        path = self._logs_path(run_id, step, [("attempt", number), ("tail", tail),
                                              ("follow", "true")])
        stream = f._open(path, {})
        if stream is None:
            return
        try:
            for ev in _http.sse_events(stream.chunks()):
                if ev.event == "end":
                    rest = decoder.decode(b"", final=True)
                    if rest:
                        yield rest
                    return
                if ev.event == "error":
                    raise EpochError("the log stream failed: " + ev.text(), code="stream_error")
                if ev.event != "log":
                    continue
                whole_line = len(ev.data) < _LOG_BLOCK
                if offset is not None:
                    offset += len(ev.data) + (1 if whole_line else 0)
                text = decoder.decode(ev.data + (b"\n" if whole_line else b""))
                if text:
                    yield text
            broken = "the log stream ended before its end event"
        except _http.StreamBroken as e:
            broken = str(e)
        finally:
            stream.close()
            f._stream = None
        if f.closed:
            return
        if offset is None:
            raise EpochConnectionError("following the log of %s/%s/%d broke (%s); with tail= "
                                       "it cannot resume" % (run_id, step, number, broken),
                                       code="stream_broken")
        # Resume from `offset` by Range, until the attempt has ended and all is read.
        f.reconnects += 1
        plain = self._logs_path(run_id, step, [("attempt", number)])
        nap = 0.2
        while not f.closed:
            ended = self._attempt_ended(f, run_id, step, number)
            got = b""
            try:
                reply = f._call(lambda: self._http.request(
                    "GET", plain, headers={"Range": "bytes=%d-" % offset}))
                got = reply.body if reply.status == 206 else b""
            except RangeNotSatisfiableError:
                got = b""
            if got:
                offset += len(got)
                text = decoder.decode(got)
                if text:
                    yield text
                continue
            if ended:
                rest = decoder.decode(b"", final=True)
                if rest:
                    yield rest
                return
            time.sleep(nap)

    # ---- metrics -----------------------------------------------------------------

    def metrics(self, run_id, step, name=None, attempt=None, rank=None):
        """GET /v1/runs/{id}/steps/{step}/metrics: the step's live-metric series:
        {"series": [{"attempt", "rank", "name", "points": [[x, y], ...]}], "last",
        "run", "step", "attempts"} (``name``/``attempt``/``rank`` filter)."""
        return self._get(_path("/v1/runs/%s/steps/%s/metrics" % (_q(run_id), _q(step)),
                               [("name", name), ("attempt", attempt), ("rank", rank)]))

    def follow_metrics(self, run_id, step, name=None, attempt=None, rank=None, after=None,
                       reconnect_timeout=60.0):
        """Follows a step's live metrics until the run has ended: an iterator (a Follow)
        yielding each point as it is recorded, as a dict {"attempt", "rank", "index"
        (the point's number in its series), "x" (its "step" member, else index),
        "values" (the point's other members; only ``name`` when given), "position" (the
        MetricsRecorded event's)}. Streams GET .../metrics?follow=true (SSE) and
        resumes after a break from the last event it yielded (Last-Event-ID)."""

        def points(envelope):
            data = envelope.get("data") or {}
            first = int(data.get("from") or 0)
            for i, p in enumerate(data.get("points") or []):
                if not isinstance(p, dict):
                    continue
                values = {k: v for k, v in p.items() if k != "step"}
                if name is not None:
                    if name not in values:
                        continue
                    values = {name: values[name]}
                index = first + i
                x = p["step"] if isinstance(p.get("step"), (int, float)) else index
                yield {"attempt": data.get("attempt"), "rank": data.get("rank", 0),
                       "index": index, "x": x, "values": values,
                       "position": envelope.get("position")}

        path = _path("/v1/runs/%s/steps/%s/metrics" % (_q(run_id), _q(step)),
                     [("attempt", attempt), ("rank", rank), ("follow", "true")])
        return Follow(self, lambda f: self._follow_sse(f, path, run_id, after, points),
                      reconnect_timeout)

    # ---- events ------------------------------------------------------------------

    @staticmethod
    def _event_query(after, limit, stream, run, type, actor, since, until, tenant):
        if isinstance(type, (list, tuple, set, frozenset)):
            type = ",".join(type)
        return [("after", after), ("limit", limit), ("stream", stream), ("run", run),
                ("type", type), ("actor", actor), ("since", since), ("until", until),
                ("tenant", tenant)]

    def events(self, after=None, limit=None, stream=None, run=None, type=None, actor=None,
               since=None, until=None, tenant=None):
        """GET /v1/events: one page of the event log by position: {"items": [{"position",
        "stream", "version", "type", "schema", "time", "epoch", "actor", "data",
        "prev_hash", "hash"}], "next_cursor": str or None}. ``after``: a position (or a
        next_cursor); ``limit`` 1..1000 (100); ``stream`` (a trailing '*' matches a
        prefix) or ``run`` (one of them); ``type``: a type or a list; ``actor``;
        ``since``/``until``: RFC 3339 times; ``tenant`` (admins and auditors)."""
        return self._get(_path("/v1/events", self._event_query(
            after, limit, stream, run, type, actor, since, until, tenant)))

    def iter_events(self, after=None, page_size=None, stream=None, run=None, type=None,
                    actor=None, since=None, until=None, tenant=None):
        """Every event that matches, oldest first, a page at a time (a generator)."""
        while True:
            page = self.events(after=after, limit=page_size, stream=stream, run=run,
                               type=type, actor=actor, since=since, until=until,
                               tenant=tenant)
            for item in page.get("items") or []:
                yield item
            after = page.get("next_cursor")
            if after is None:
                return

    def run_events(self, run_id, after=None):
        """GET /v1/runs/{id}/events: every event of the run's stream (after a position
        when given): {"items": [...], "next_cursor": null}."""
        return self._get(_path("/v1/runs/%s/events" % _q(run_id), [("after", after)]))

    def follow_events(self, after=None, stream=None, run=None, type=None, actor=None,
                      tenant=None, reconnect_timeout=60.0):
        """Follows the global event log (GET /v1/events?follow=true, SSE): an iterator (a
        Follow) yielding each event (the dicts of events()) as it is appended, from
        position ``after`` on (default: the beginning). It never ends by itself; when
        the connection drops or the master restarts it reconnects (backing off, for up
        to ``reconnect_timeout`` seconds, None = for ever) with Last-Event-ID = the last
        position it yielded, so it goes on with no event missed or repeated."""
        path = _path("/v1/events", self._event_query(
            None, None, stream, run, type, actor, None, None, tenant) + [("follow", "true")])
        return Follow(self, lambda f: self._follow_sse(f, path, None, after, None),
                      reconnect_timeout)

    def follow_run_events(self, run_id, after=None, reconnect_timeout=60.0):
        """Follows one run's events (GET /v1/runs/{id}/events?follow=true, SSE) until the
        run has ended and every event was yielded; resumes as follow_events does."""
        path = "/v1/runs/%s/events?follow=true" % _q(run_id)
        return Follow(self, lambda f: self._follow_sse(f, path, run_id, after, None),
                      reconnect_timeout)

    def _follow_sse(self, f, path, run_id, after, convert):
        """The resumable follow of an event stream whose SSE ids are positions. With a
        run_id the stream ends with the run: once a stream has ended (or broken) and
        the run is found ended, one more stream from the last position drains what is
        left, and its end is the end."""
        if after is not None:
            f.last_id = int(after)
        draining = False
        while not f.closed:
            headers = {}
            if f.last_id is not None:
                headers["Last-Event-ID"] = str(f.last_id)
            stream = f._open(path, headers)
            if stream is None:
                return
            clean = False
            try:
                for ev in _http.sse_events(stream.chunks()):
                    if ev.event == "error":
                        raise EpochError("the event stream failed: " + ev.text(),
                                         code="stream_error")
                    try:
                        position = int(ev.id)
                    except (TypeError, ValueError):
                        continue
                    if f.last_id is not None and position <= f.last_id:
                        continue  # already yielded (never happens with epochd; cheap)
                    envelope = ev.json()
                    f.last_id = position
                    if convert is None:
                        yield envelope
                    else:
                        for item in convert(envelope):
                            yield item
                clean = True
            except _http.StreamBroken:
                pass
            finally:
                stream.close()
                f._stream = None
            if f.closed:
                return
            if run_id is None:
                f._broke()  # the global log never ends: reconnect
                continue
            if draining and clean:
                return
            run = f._call(lambda: self.get_run(run_id))
            if run.get("state") in RUN_TERMINAL_STATES and not draining:
                draining = True  # one more stream from the last position, at once
                continue
            f._broke()


class Follow:
    """An iterator over a followed stream (logs, metrics, events) that reconnects.

    Attributes: ``last_id`` (the position of the last event yielded, for events and
    metrics), ``reconnects`` (how many times it had to reconnect or resume), ``closed``.
    ``close()`` stops it, also from another thread (a read in progress is cut).
    Use it as an iterator or as a context manager (closed on exit).
    """

    def __init__(self, client, body, reconnect_timeout):
        self.client = client
        self.reconnect_timeout = reconnect_timeout
        self.last_id = None
        self.reconnects = 0
        self.closed = False
        self._stream = None
        self._broken_since = None
        self._backoff = 0.05
        self._lock = threading.Lock()
        self._gen = body(self)

    def __iter__(self):
        return self

    def __next__(self):
        if self.closed:
            raise StopIteration
        return next(self._gen)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        with self._lock:
            self.closed = True
            stream = self._stream
        if stream is not None:
            stream.close()
        try:
            self._gen.close()
        except ValueError:
            pass  # running in another thread: it sees `closed` once its read is cut

    # -- for the follow bodies --

    def _broke(self):
        """A stream broke: count it, and back off before the next try."""
        self.reconnects += 1
        self._nap()

    def _nap(self):
        if self._broken_since is None:
            self._broken_since = time.monotonic()
        elif self.reconnect_timeout is not None and \
                time.monotonic() - self._broken_since > self.reconnect_timeout:
            raise EpochConnectionError(
                "could not reconnect within %ss" % self.reconnect_timeout, code="unavailable")
        time.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, 1.0)

    def _healthy(self):
        self._broken_since = None
        self._backoff = 0.05

    def _call(self, fn):
        """fn() retried on connection failures and 503s (a master restarting) within
        reconnect_timeout."""
        while True:
            try:
                out = fn()
                self._healthy()
                return out
            except (EpochConnectionError, UnavailableError):
                if self.closed:
                    raise
                self._nap()

    def _open(self, path, headers):
        """Opens the stream (retrying as _call does); None once closed."""
        while not self.closed:
            try:
                stream = self.client._http.request("GET", path, headers=headers,
                                                   timeout=self.client.stream_timeout,
                                                   stream=True)
            except (EpochConnectionError, UnavailableError):
                self._nap()
                continue
            with self._lock:
                if self.closed:
                    stream.close()
                    return None
                self._stream = stream
            self._healthy()
            return stream
        return None
