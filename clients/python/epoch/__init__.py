"""A Python client for Epoch's v1 HTTP API (standard library only).

    import epoch
    c = epoch.Client("http://127.0.0.1:30745", token="epoch_...")
    c.register_workflow({"name": "hi", "steps": [
        {"name": "say", "command": ["sh", "-c", "echo hi"]}]})
    run = c.submit_run("hi", idempotency_key="hi-1")
    print(c.wait_run(run["id"], timeout=60)["state"], c.logs(run["id"], "say"))

See clients/python/README.md.
"""

from .client import (ATTEMPT_TERMINAL_STATES, DEFAULT_SERVER, RUN_TERMINAL_STATES, Client,
                     Follow)
from .errors import (AuthenticationError, BadRequestError, ClientError, ConflictError,
                     EpochConnectionError, EpochError, EpochTimeoutError, GoneError,
                     InsufficientStorageError, InvalidError, NotFoundError,
                     PayloadTooLargeError, PermissionDeniedError, RangeNotSatisfiableError,
                     ServerError, TooManyRequestsError, UnavailableError,
                     UnsupportedMediaTypeError)

__version__ = "1.0"

__all__ = [
    "Client", "Follow", "DEFAULT_SERVER", "RUN_TERMINAL_STATES", "ATTEMPT_TERMINAL_STATES",
    "EpochError", "ClientError", "BadRequestError", "AuthenticationError",
    "PermissionDeniedError", "NotFoundError", "ConflictError", "GoneError",
    "PayloadTooLargeError", "UnsupportedMediaTypeError", "RangeNotSatisfiableError",
    "InvalidError", "TooManyRequestsError", "ServerError", "UnavailableError",
    "InsufficientStorageError", "EpochConnectionError", "EpochTimeoutError",
]
