"""The drop-in endpoint: the gateway's own interface, answered by the dispatcher.

An application written for the IntelliSoftware gateway changes its base URL to
``http(s)://<dispatcher>/smsgateway`` and gains queueing, retries and the audit
trail. It sends what it always sent (``sendmsg.aspx`` and ``getbalance.aspx``,
GET query or POST form: ``username``, ``password``, ``to``, ``text``, ``from``,
``maxconcat``, ``type``, ``usercontext``), with a dispatcher API key's *name* as
the username and its *token* as the password, and reads what it always read:

- ``ID:<job id>`` for one recipient;
- for several, one CRLF-terminated line per number: ``<number>,ID:<job id>``
  for those queued (international digits, duplicates removed, as the gateway
  does) and ``<number>,ERR:INVALID_NUMBER`` for those that cannot be phone
  numbers, recorded as failed in the same transaction;
- one line ``ERR:<CODE>`` when the whole request fails, checked in the
  gateway's order: ``NO_USERNAME``, ``NO_PASSWORD``, ``LOGIN_INVALID`` (unknown
  or revoked token, a token of another key, or a key without the send scope),
  ``NO_TO``, ``NO_TEXT``, ``INVALID_REQUEST`` (too many numbers, a bad
  ``maxconcat`` or ``type``, text longer than ``maxconcat`` parts),
  ``INVALID_NUMBER`` (no number usable), ``INTERNAL_ERROR`` (the dispatcher's
  database unavailable: nothing was queued, try again). A ``from`` the key may
  not use (neither granted to it, ``dispatcher keys update --grant-sender``, nor
  the default sender) is ``INVALID_REQUEST`` too: the gateway has no code of its
  own for it. With no ``from``, the configured default sender (or, for a key
  whose grants do not include it, its first grant) is used.

The job belongs to the key: through ``/v1``, only that key (or an operator) sees
it.

``getbalance.aspx`` needs a key with the ``balance`` scope (else
``LOGIN_INVALID``) and answers ``BALANCE:<n>`` from a short cache
(``dispatcher.api.balance``): one gateway call per ``DISPATCHER_BALANCE_CACHE_S``.

``type=6`` queues a voice message. The gateway has no parameter for a send
time, a priority or a validity, so drop-in jobs go at once, in the ``normal``
lane, with the server's default validity (``DISPATCHER_DEFAULT_VALIDITY_S``).

The ID is the dispatcher's job id, not a gateway message ID: the gateway's IDs
arrive per recipient when workers send, and ``GET /v1/jobs/{id}`` shows them.
Answers are ``text/plain``, never JSON.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response
from starlette.datastructures import UploadFile

from dispatcher.api.auth import Authenticator, GatewayLoginError, authenticator
from dispatcher.api.balance import BalanceCache
from dispatcher.api.errors import DROPIN_PREFIX, ApiError, dropin_refusal, gateway_error
from dispatcher.domain.message import TYPE_TEXT, TYPE_VOICE
from dispatcher.domain.statuses import Scope
from dispatcher.errors import DispatcherError, SenderNotAllowedError
from dispatcher.gateway.protocol import BALANCE_PATH, SEND_PATH
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.keys import KeyInfo

log = logging.getLogger(__name__)

router = APIRouter(prefix=DROPIN_PREFIX, include_in_schema=False)

_KINDS = {str(TYPE_TEXT): "text", str(TYPE_VOICE): "voice"}
CRLF = "\r\n"


class GatewayReply(Exception):
    """Ends a drop-in request with the gateway's ``ERR:<code>``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def dropin_actor(key_name: str) -> str:
    """Who the audit trail names for a drop-in request."""
    return f"dropin:{key_name}"


async def _params(request: Request) -> dict[str, str]:
    """The gateway's parameters: the query, and for a POST its form on top."""
    params = dict(request.query_params.items())
    if request.method == "POST":
        try:
            async with request.form() as form:
                for name, value in form.items():
                    if not isinstance(value, UploadFile):
                        params[name] = value
        except Exception as exc:
            # A malformed multipart body; the gateway would call it a bad request.
            log.info("drop-in: unreadable form (%s)", type(exc).__name__)
            raise GatewayReply("INVALID_REQUEST") from None
    return params


def _login(auth: Authenticator, params: dict[str, str], scope: Scope) -> KeyInfo:
    username = params.get("username", "")
    if not username:
        raise GatewayReply("NO_USERNAME")
    password = params.get("password", "")
    if not password:
        raise GatewayReply("NO_PASSWORD")
    try:
        info = auth.gateway_login(username, password, scope=scope)
    except GatewayLoginError:
        raise GatewayReply("LOGIN_INVALID") from None
    auth.spend(info)
    return info


def _number_label(raw: str) -> str:
    """How a refused number is named in a reply line.

    Its digits (with a leading ``+``), as the gateway writes numbers; the input
    itself, cleaned of anything that would break the line grammar, when it has
    no digit at all.
    """
    text = raw.strip()
    digits = "".join(ch for ch in text if ch.isascii() and ch.isdigit())
    if digits:
        return ("+" if text.startswith("+") else "") + digits
    return "".join(ch for ch in text if ch.isprintable() and ch not in ", ") or "?"


def _send(service: Dispatcher, key: KeyInfo, params: dict[str, str]) -> str:
    numbers = [n.strip() for n in params.get("to", "").split(",")]
    # A trailing or doubled comma is a habit of hand-built query strings, not a number.
    numbers = [n for n in numbers if n]
    if not numbers:
        raise GatewayReply("NO_TO")
    text = params.get("text", "")
    if not text:
        raise GatewayReply("NO_TEXT")
    try:
        maxconcat = int(params.get("maxconcat") or 1)
    except ValueError:
        raise GatewayReply("INVALID_REQUEST") from None
    kind = _KINDS.get((params.get("type") or str(TYPE_TEXT)).strip())
    if kind is None:
        raise GatewayReply("INVALID_REQUEST")
    if any(not n.isprintable() for n in numbers):
        raise GatewayReply("INVALID_REQUEST")
    try:
        request = service.send_request(
            numbers,
            text,
            sender=params.get("from") or None,
            maxconcat=maxconcat,
            kind=kind,
            reference=params.get("usercontext") or None,
        )
        result = service.enqueue_request(
            request,
            actor=dropin_actor(key.name),
            allowed_senders=key.allowed_senders,
            owner_key_id=key.id,
        )
    except SenderNotAllowedError:
        # Answered from the table like any refusal (INVALID_REQUEST: the gateway has no
        # code of its own for it); logged, since a client cannot tell it apart.
        log.info("drop-in: key %s asked for a sender it may not use", key.name)
        raise
    if len(result.accepted) + len(result.refused) == 1 and result.accepted:
        return f"ID:{result.job_id}"
    lines = [f"{number},ID:{result.job_id}" for number in result.accepted]
    lines += [f"{_number_label(raw)},ERR:INVALID_NUMBER" for raw, _reason in result.refused]
    return CRLF.join(lines) + CRLF


def _text(body: str) -> Response:
    return PlainTextResponse(body)


async def _handle(request: Request, path: str) -> Response:
    service: Dispatcher = request.app.state.service
    auth = authenticator(request)
    try:
        params = await _params(request)
        scope = Scope.SEND if path == SEND_PATH else Scope.BALANCE
        key = await run_in_threadpool(_login, auth, params, scope)
        if path == SEND_PATH:
            return _text(await run_in_threadpool(_send, service, key, params))
        balance: BalanceCache = request.app.state.balance
        return _text(await run_in_threadpool(balance.answer))
    except GatewayReply as reply:
        return gateway_error(reply.code)
    except DispatcherError as exc:
        # The service's refusals, answered with the gateway code of the table every
        # entry point shares (dispatcher.errors.ANSWERS).
        return dropin_refusal(exc)
    except ApiError as exc:
        return gateway_error(exc.gateway_code, status=exc.status, headers=exc.headers)


@router.api_route(SEND_PATH, methods=["GET", "POST"])
async def sendmsg(request: Request) -> Response:
    """Queue a message, answering as the gateway's ``sendmsg.aspx`` would."""
    return await _handle(request, SEND_PATH)


@router.api_route(BALANCE_PATH, methods=["GET", "POST"])
async def getbalance(request: Request) -> Response:
    """The gateway account's balance, as ``getbalance.aspx`` answers it."""
    return await _handle(request, BALANCE_PATH)
