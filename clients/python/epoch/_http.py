"""The HTTP transport of the Epoch client (internal): servers, failover, redirects,
TLS, keep-alive, error answers, and a server-sent-events reader.

Standard library only (http.client, ssl, urllib.parse).
"""

import http.client
import json
import socket
import ssl
import threading
import urllib.parse

from .errors import EpochConnectionError, error_from_response

USER_AGENT = "epoch-python/1"

# Errors of a connection that broke (or could not be made).
_NET_ERRORS = (OSError, http.client.HTTPException, ssl.SSLError)


def split_servers(url):
    """'http://a:1, https://b:2' -> ['http://a:1', 'https://b:2'] (as epochctl's
    SplitServers: spaces and trailing '/' trimmed, http:// added when no scheme)."""
    out = []
    for item in str(url).split(","):
        item = item.strip()
        if not item:
            continue
        if "://" not in item:
            item = "http://" + item
        item = item.rstrip("/")
        parts = urllib.parse.urlsplit(item)
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError("server URL %r is not http:// or https://" % item)
        if not parts.hostname:
            raise ValueError("server URL %r has no host" % item)
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("server URL %r must not have a path" % item)
        out.append("%s://%s" % (parts.scheme.lower(), parts.netloc))
    if not out:
        raise ValueError("no server URL given")
    return out


def origin(url):
    """(scheme, host, port) of a URL, ports made explicit."""
    p = urllib.parse.urlsplit(url)
    scheme = p.scheme.lower()
    port = p.port or (443 if scheme == "https" else 80)
    return scheme, (p.hostname or "").lower(), port


class Reply:
    """A complete answer: status, headers (lower-case names) and body bytes."""

    def __init__(self, status, headers, body, server):
        self.status = status
        self.headers = headers
        self.body = body
        self.server = server

    def json(self):
        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError as e:
            raise EpochConnectionError(
                "the answer from %s is not JSON: %s" % (self.server, e), code="bad_answer")


class StreamBroken(Exception):
    """A streamed answer ended without its proper end (connection lost, timeout)."""


class Stream:
    """An open streamed answer (a 2xx whose body is read as it arrives)."""

    def __init__(self, conn, resp, server):
        self.conn = conn
        self.resp = resp
        self.server = server
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}
        self._closed = False

    def chunks(self, size=65536):
        """Yields the body's bytes as they arrive; returns at its end; raises
        StreamBroken when the connection breaks or stays silent past its timeout."""
        while True:
            try:
                data = self.resp.read1(size)
            except (http.client.IncompleteRead, OSError, ValueError, AttributeError,
                    http.client.HTTPException) as e:
                # ValueError/AttributeError: read on a connection close() shut meanwhile.
                raise StreamBroken(str(e) or type(e).__name__) from e
            if not data:
                # A chunked body that ended with its last chunk, or a close-delimited
                # one (HTTP/1.0): either way the server ended it.
                return
            yield data

    def close(self):
        """Closes the connection; safe to call from another thread (it unblocks a
        read in progress)."""
        if self._closed:
            return
        self._closed = True
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


class SseEvent:
    """One server-sent event: id (the last id: seen on the stream, the SSE rule), event
    type ('message' when none was given) and data (bytes, data: lines joined by \\n)."""

    __slots__ = ("id", "event", "data")

    def __init__(self, id, event, data):
        self.id = id
        self.event = event
        self.data = data

    def text(self):
        return self.data.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.data.decode("utf-8"))


def sse_events(chunks):
    """Parses text/event-stream bytes into SseEvents. Lines end at '\\n' only (epochd
    writes '\\n'; a '\\r' inside a step's log line is kept, not taken as a line end; a
    '\\r' before the '\\n' is dropped from field lines other than data)."""
    buf = b""
    last_id = None
    event = None
    data = []
    for chunk in chunks:
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1:]
            if not line or line == b"\r":
                if data:
                    yield SseEvent(last_id, event or "message", b"\n".join(data))
                event, data = None, []
                continue
            if line.startswith(b":"):
                continue  # a comment (keep-alive)
            name, sep, value = line.partition(b":")
            if sep and value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value)
                continue
            value = value.rstrip(b"\r")
            if name == b"event":
                event = value.decode("utf-8", "replace")
            elif name == b"id":
                if b"\0" not in value:
                    last_id = value.decode("utf-8", "replace")
            # retry: and unknown fields are ignored
    # An unterminated event at the end of the stream is dropped (the SSE rule).


class Transport:
    """Sends requests to a list of servers the way epochctl does (api/client/client.cc):
    the server that answered last is tried first; a connection failure or a 503 tries
    the next; a 307/308 is followed (method and body kept, at most max_redirects hops)
    only to the same origin or to another of the servers given with the same scheme,
    never from https to http (the token goes with every request); a POST that was sent
    and then lost its connection is not resent unless it carries an Idempotency-Key.
    Keep-alive connections are kept per thread for GETs and idempotent POSTs."""

    def __init__(self, servers, token=None, ssl_context=None, timeout=30.0, max_redirects=5):
        self.servers = list(servers)
        self.token = token
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.preferred = None
        self._local = threading.local()
        self._pools_lock = threading.Lock()
        self._pools = []  # every thread's pool, to close them all when collected

    # ---- connections -------------------------------------------------------------

    def _new_conn(self, base, timeout):
        scheme, host, port = origin(base)
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=timeout,
                                               context=self.ssl_context)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _pool(self):
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
            with self._pools_lock:
                self._pools.append(pool)
        return pool

    @staticmethod
    def _close_pool(pool):
        for conn in list(pool.values()):
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        pool.clear()

    def close(self):
        """Closes this thread's kept-alive connections."""
        self._close_pool(self._pool())

    def __del__(self):
        # Unreachable: no thread is using any of the pools any more.
        for pool in getattr(self, "_pools", []):
            self._close_pool(pool)

    def _headers(self, extra, has_body, stream):
        h = {"User-Agent": USER_AGENT,
             "Accept": "text/event-stream, text/plain, */*" if stream else "application/json"}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        if has_body:
            h["Content-Type"] = "application/json"
        for k, v in (extra or {}).items():
            if v is not None:
                h[k] = str(v)
        return h

    def _exchange(self, base, method, path, body, headers, timeout, stream, reuse):
        """One request to one server. Returns (conn, resp). Raises _NotSent when
        nothing reached the server, _Lost when the request may have been sent."""
        pool = self._pool()
        conn = pool.pop(base, None) if reuse else None
        reused = conn is not None
        if conn is None:
            conn = self._new_conn(base, timeout)
            try:
                conn.connect()
            except _NET_ERRORS as e:
                conn.close()
                raise _NotSent("%s: %s" % (base, _describe(e))) from e
        else:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
        except _NET_ERRORS as e:
            conn.close()
            if reused and isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                         BrokenPipeError, ConnectionAbortedError)):
                # A kept-alive connection the server had closed: nothing was processed.
                return self._exchange(base, method, path, body, headers, timeout, stream,
                                      reuse=False)
            raise _Lost("%s: %s" % (base, _describe(e))) from e
        return conn, resp

    def _finish(self, base, conn, resp, keep):
        """Reads a whole answer; keeps the connection for reuse when it may be."""
        try:
            data = resp.read()
        except _NET_ERRORS as e:
            conn.close()
            raise _Lost("%s: reading the answer: %s" % (base, _describe(e))) from e
        headers = {k.lower(): v for k, v in resp.getheaders()}
        if keep and not resp.will_close:
            old = self._pool().pop(base, None)
            if old is not None and old is not conn:
                old.close()
            self._pool()[base] = conn
        else:
            conn.close()
        return Reply(resp.status, headers, data, base)

    # ---- requests ----------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, timeout=None, stream=False,
                accept_status=()):
        """Sends a request; returns a Reply (or, with stream=True, an open Stream for a
        2xx answer). An error answer raises its EpochError (statuses in accept_status
        are returned instead); no server reachable raises EpochConnectionError."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
        elif isinstance(body, str):
            body = body.encode("utf-8")
        timeout = self.timeout if timeout is None else timeout
        hdrs = self._headers(headers, body is not None, stream)
        idempotent = method in ("GET", "HEAD") or any(
            k.lower() == "idempotency-key" for k in hdrs)
        reuse = idempotent and not stream
        order = []
        if self.preferred:
            order.append(self.preferred)
        for s in self.servers:
            if s not in order:
                order.append(s)
        tried = []
        last_error = None
        for i, start in enumerate(order):
            base, target = start, path
            hops = 0
            while True:
                try:
                    conn, resp = self._exchange(base, method, target, body, hdrs, timeout,
                                                stream, reuse)
                except _NotSent as e:
                    tried.append(str(e))
                    last_error = None
                    if self.preferred == base:
                        self.preferred = None
                    break
                except _Lost as e:
                    if not idempotent:
                        raise EpochConnectionError(
                            "%s %s to %s failed after it was sent (%s); it may have "
                            "succeeded: check before retrying (or give an idempotency key)"
                            % (method, target, base, e), code="unknown_outcome") from e
                    tried.append(str(e))
                    last_error = None
                    if self.preferred == base:
                        self.preferred = None
                    break
                status = resp.status
                if status in (301, 302, 303, 307, 308):
                    reply = self._finish(base, conn, resp, keep=False)
                    location = reply.headers.get("location", "")
                    if not location:
                        raise EpochConnectionError(
                            "%s answered %d without a Location header" % (base, status),
                            code="bad_answer")
                    hops += 1
                    if hops > self.max_redirects:
                        raise EpochConnectionError(
                            "more than %d redirects, last to %s" % (self.max_redirects, location),
                            code="too_many_redirects")
                    if location.startswith("/"):
                        target = location
                        continue
                    new_base, new_target = _split_url(location)
                    base = self._redirect_target(base, new_base, location)
                    target = new_target
                    self.preferred = base
                    continue
                if status == 503 and i + 1 < len(order):
                    reply = self._finish(base, conn, resp, keep=False)
                    last_error = error_from_response(status, reply.body, reply.headers)
                    if self.preferred == base:
                        self.preferred = None
                    break
                if 200 <= status < 300 and stream:
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout)
                    self.preferred = base
                    return Stream(conn, resp, base)
                reply = self._finish(base, conn, resp, keep=reuse)
                if status >= 400 and status not in accept_status:
                    raise error_from_response(status, reply.body, reply.headers)
                self.preferred = base
                return reply
        if last_error is not None:
            raise last_error
        raise EpochConnectionError("cannot reach any server (%s)" % "; ".join(tried),
                                   code="unavailable")

    def _redirect_target(self, base, new_base, location):
        f, t = origin(base), origin(new_base)
        if f == t:
            return base
        if f[0] == "https" and t[0] != "https":
            raise EpochConnectionError(
                "%s redirected to %s: not following a redirect from https to http"
                % (base, location), code="redirect_refused")
        for s in self.servers:
            if origin(s) == t and t[0] == f[0]:
                return s
        raise EpochConnectionError(
            "%s redirected to %s, which is not one of the servers given; not following it "
            "(add it to the client's URL list if it is yours)" % (base, location),
            code="redirect_refused")


class _NotSent(Exception):
    pass


class _Lost(Exception):
    pass


def _split_url(url):
    p = urllib.parse.urlsplit(url)
    base = "%s://%s" % (p.scheme.lower(), p.netloc)
    target = p.path or "/"
    if p.query:
        target += "?" + p.query
    return base, target


def _describe(e):
    if isinstance(e, ssl.SSLCertVerificationError):
        return "TLS certificate verification failed (%s); give ca_file= (the data dir's " \
               "tls/cert.pem) or insecure=True" % (e.verify_message or e)
    if isinstance(e, socket.timeout):
        return "timed out"
    text = str(e)
    return "%s: %s" % (type(e).__name__, text) if text else type(e).__name__
