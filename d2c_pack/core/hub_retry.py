"""Retries of Hub requests, and the one line a Hub failure is shown as: used by every command that reads or writes the Hub.

Each request (a file listing, a file read, one file's upload, one commit, a tag …) is retried on what
passes by waiting — 429 (honouring ``Retry-After``), 500/502/503/504, dropped connections and
timeouts — with jittered exponential backoff, bounded in attempts and in the time spent waiting
for that request (:class:`RetryPolicy`). A long upload that fails late is therefore retried like a
short one. What does not pass (401, 403, 404, 409 …, a host name that does not resolve,
``HF_HUB_OFFLINE``) fails at once.

One layer of retries: while a request runs under :func:`with_retries`, huggingface_hub's own backoff
(``http_backoff``: five more tries per request, each logged) is turned off, so that a failure is
tried ``attempts`` times, not ``attempts`` × 6, and logged once per try.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import httpx2
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import _http

from d2c_pack.core.errors import UserError, first_line

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# What getaddrinfo says when a host name does not exist (glibc, macOS): no wait makes it resolve. Its
# "Temporary failure in name resolution" (a DNS server not answering) is retried like any dropped connection.
UNKNOWN_HOST = ("Name or service not known", "nodename nor servname provided", "No address associated with hostname")
HubFailure = HfHubHTTPError | httpx2.TransportError | OfflineModeIsEnabled


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How one Hub request is retried: at most ``attempts`` tries, waiting base·2ⁿ (jittered, at most
    ``max_delay``) or the server's ``Retry-After`` in between, ``max_wait`` seconds of waiting in all."""

    attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_wait: float = 600.0


DEFAULT_POLICY = RetryPolicy()  # read at call time: tests shorten it


def with_retries(call: Callable[[], T], what: str, policy: RetryPolicy | None = None) -> T:
    """``call()``, retried on transient failures as ``policy`` (default :data:`DEFAULT_POLICY`) allows;
    the last failure is raised."""
    policy = policy or DEFAULT_POLICY
    waited = 0.0
    for attempt in range(1, policy.attempts + 1):
        try:
            with _client_retries_off():
                return call()
        except Exception as err:
            failure = hub_failure(err)
            delay = None if failure is None else _retry_delay(failure, attempt, policy)
            if delay is None or attempt == policy.attempts or waited + delay > policy.max_wait:
                raise
            log.warning("%s: %s; retry %d/%d in %.1f s", what, _failure(failure), attempt, policy.attempts - 1, delay)
            time.sleep(delay)
            waited += delay
    raise AssertionError("unreachable")


_client_retries = threading.Lock()
_client_retries_held = 0  # requests running under with_retries, in any thread
_client_settings: tuple[list[dict], int] = ([], logging.NOTSET)  # what was there before: restored by the last one out


@contextmanager
def _client_retries_off() -> Iterator[None]:
    """huggingface_hub's own retries off, and its retry log lines quiet, while any request runs under ours.

    Its ``http_backoff`` and ``http_stream_backoff`` take ``max_retries`` from their keyword defaults (no caller
    passes it): set to 0 by the first request in, restored by the last one out.
    """
    global _client_retries_held, _client_settings
    backoffs = (_http.http_backoff, _http.http_stream_backoff.__wrapped__)  # the latter is a context manager's generator
    logger = logging.getLogger(_http.__name__)
    with _client_retries:
        if _client_retries_held == 0:
            _client_settings = ([backoff.__kwdefaults__ for backoff in backoffs], logger.level)
            for backoff in backoffs:
                backoff.__kwdefaults__ = backoff.__kwdefaults__ | {"max_retries": 0}
            logger.setLevel(logging.ERROR)  # its "… thrown while requesting" lines: ours say it once per try
        _client_retries_held += 1
    try:
        yield
    finally:
        with _client_retries:
            _client_retries_held -= 1
            if _client_retries_held == 0:
                defaults, level = _client_settings
                for backoff, kwdefaults in zip(backoffs, defaults):
                    backoff.__kwdefaults__ = kwdefaults
                logger.setLevel(level)


def hub_failure(err: BaseException | None) -> HubFailure | None:
    """The HTTP or connection failure behind ``err``: itself, or what it wraps (huggingface_hub
    re-raises a failed LFS upload as a RuntimeError ``from`` the HTTP error; ``datasets`` wraps
    some of its Hub failures the same way)."""
    seen = set()
    while err is not None and id(err) not in seen and not isinstance(err, (HfHubHTTPError, httpx2.TransportError, OfflineModeIsEnabled)):
        seen.add(id(err))
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)  # the chain a traceback shows
    return err


@contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Turns a Hub failure raised inside into a one-line :class:`UserError` naming ``what`` failed and why."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        if (failure := hub_failure(err)) is None:
            raise
        raise UserError(f"{what} failed: {hub_problem(failure)}") from None


def hub_problem(failure: HubFailure) -> str:
    """One line on why a Hub request failed; "re-run to continue" only where a later try can succeed."""
    if isinstance(failure, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so the Hub is not contacted (unset it to reach the Hub)"
    if unknown_host(failure):
        return f"the Hub's host name does not resolve ({first_line(failure)}): no network, or a wrong HF_ENDPOINT"
    if not isinstance(failure, HfHubHTTPError):
        return f"the Hub could not be reached ({first_line(failure)}); re-run to continue"
    if isinstance(failure, RevisionNotFoundError):
        return "HTTP 404: the revision does not exist"
    if isinstance(failure, RepositoryNotFoundError):  # the Hub answers 401 to an anonymous request for a missing repository
        return "the repository does not exist" + ("" if _has_token() else ", or is private or gated (set HF_TOKEN or run `hf auth login`)")
    status = status_of(failure)
    cause = {
        401: "the token was refused, or the repository is private or gated (set HF_TOKEN or run `hf auth login`)",
        403: "the token may not do this",
        404: "the repository, revision or file does not exist",
        409: "conflict with the repository's current state",
    }.get(status, first_line(failure))
    return f"HTTP {status}: {cause}" if status else cause


def status_of(err: HfHubHTTPError) -> int | None:
    return err.response.status_code if err.response is not None else None


def unknown_host(failure: HubFailure) -> bool:
    """Whether the failure is a host name that does not resolve (not a DNS server that did not answer)."""
    return isinstance(failure, httpx2.ConnectError) and any(text in str(failure) for text in UNKNOWN_HOST)


def _has_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def _retry_delay(err: Exception, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before the next try, or None when the failure will not pass by waiting."""
    if isinstance(err, OfflineModeIsEnabled) or unknown_host(err):
        return None
    if isinstance(err, HfHubHTTPError):
        status = status_of(err)
        if status not in TRANSIENT_STATUSES:
            return None
        retry_after = err.response.headers.get("Retry-After") if err.response is not None else None
        if status == 429 and retry_after and retry_after.isdigit():
            return min(float(retry_after), policy.max_delay)
    backoff = min(policy.base_delay * 2 ** (attempt - 1), policy.max_delay)
    return backoff * random.uniform(0.5, 1.0)  # jitter: many clients do not retry in lockstep


def _failure(err: Exception) -> str:
    status = status_of(err) if isinstance(err, HfHubHTTPError) else None
    return f"HTTP {status}" if status else type(err).__name__
