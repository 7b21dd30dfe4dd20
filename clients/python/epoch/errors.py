"""The exceptions of the Epoch client.

Every error is an :class:`EpochError`. An answer of the API that is an error carries
the API's error body ``{"error": {"code", "message", "details": [...]}}`` (written by
epochd's ``api/http_util.cc``): ``status`` is the HTTP status, ``code`` the machine
code (``not_found``, ``malformed``, ``invalid``, ``unauthenticated``,
``permission_denied``, ``conflict``, ``idempotency_key_reused``, ...), ``message`` the
server's message and ``details`` its list of details (for an invalid workflow: one
``"<json path>: <problem>"`` per problem).

A failure to talk to any server at all is an :class:`EpochConnectionError` (``status``
is ``None``); a :meth:`Client.wait_run` that runs out of time is an
:class:`EpochTimeoutError`.
"""

import json

__all__ = [
    "EpochError",
    "ClientError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "GoneError",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
    "RangeNotSatisfiableError",
    "InvalidError",
    "TooManyRequestsError",
    "ServerError",
    "UnavailableError",
    "InsufficientStorageError",
    "EpochConnectionError",
    "EpochTimeoutError",
    "error_from_response",
]


class EpochError(Exception):
    """An error of the Epoch API or of talking to it.

    Attributes: ``status`` (the HTTP status, ``None`` when no answer came), ``code``
    (the API's error code), ``message`` (its message), ``details`` (a list, maybe
    empty) and ``headers`` (the answer's headers, lower-case names; empty when none).
    """

    def __init__(self, message, status=None, code=None, details=None, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details or [])
        self.headers = dict(headers or {})

    def __str__(self):
        head = ""
        if self.status is not None:
            head = "%d %s: " % (self.status, self.code or "error")
        elif self.code:
            head = "%s: " % self.code
        text = head + (self.message or "")
        if self.details:
            text += " (" + "; ".join(str(d) for d in self.details) + ")"
        return text

    def __repr__(self):
        return "%s(status=%r, code=%r, message=%r, details=%r)" % (
            type(self).__name__, self.status, self.code, self.message, self.details)


class ClientError(EpochError):
    """A 4xx answer: the request was refused."""


class BadRequestError(ClientError):
    """400: malformed JSON, a wrong type, a bad query parameter (codes ``malformed``,
    ``bad_parameter``)."""


class AuthenticationError(ClientError):
    """401 ``unauthenticated``: no token, or one that is unknown or revoked."""


class PermissionDeniedError(ClientError):
    """403 ``permission_denied``: the token's role may not do this."""


class NotFoundError(ClientError):
    """404 ``not_found``: an unknown id (or another tenant's)."""


class ConflictError(ClientError):
    """409 ``conflict`` / ``failed_precondition``: the wrong state for this."""


class GoneError(ClientError):
    """410 ``gone``: retention deleted it (a step's log)."""


class PayloadTooLargeError(ClientError):
    """413: a body over ``api.maxBodyBytes``."""


class UnsupportedMediaTypeError(ClientError):
    """415 ``unsupported_media_type``."""


class RangeNotSatisfiableError(ClientError):
    """416 ``range_not_satisfiable``: a log range past its end."""


class InvalidError(ClientError):
    """422 ``invalid`` (an invalid definition or parameters, each problem in
    ``details``) or ``idempotency_key_reused``."""


class TooManyRequestsError(ClientError):
    """429 ``too_many_streams`` / ``resource_exhausted``."""


class ServerError(EpochError):
    """A 5xx answer."""


class UnavailableError(ServerError):
    """503: not the leader and none known, a storage error, ``corrupt_history``."""


class InsufficientStorageError(ServerError):
    """507 ``insufficient_storage``."""


class EpochConnectionError(EpochError):
    """No server could be reached, or a connection broke before the answer (a POST
    without an idempotency key whose outcome is unknown says so)."""


class EpochTimeoutError(EpochError):
    """A wait ran out of time. ``run`` holds the last state seen (a dict, or None)."""

    def __init__(self, message, run=None):
        super().__init__(message, code="timeout")
        self.run = run


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    416: RangeNotSatisfiableError,
    422: InvalidError,
    429: TooManyRequestsError,
    503: UnavailableError,
    507: InsufficientStorageError,
}


def error_from_response(status, body, headers=None):
    """The EpochError for an error answer: its class by status, its fields from the
    API's error body; a body that is not the API's error shape gives code
    ``http_<status>`` and the start of the body as the message."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ClientError if 400 <= status < 500 else ServerError if status >= 500 else EpochError
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
    code, message, details = "http_%d" % status, None, []
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        code = err.get("code") or code
        message = err.get("message")
        details = err.get("details") or []
        if not isinstance(details, list):
            details = [details]
    if message is None:
        message = "HTTP %d: %s" % (status, text[:200].strip())
    return cls(message, status=status, code=code, details=details, headers=headers)
