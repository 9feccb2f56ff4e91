"""A v3 Mail Send request body as the gateway accepts it: SendGrid's rules, and room for its id.

The body must pass SendGrid's own rules (``schema``), so that a mail the gateway accepts is one
SendGrid accepts later, when the queue delivers it; and it must leave the gateway room for the
``mailgate_id`` it adds to every personalization's custom_args.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json

from shared.errors import FieldProblem, InvalidMessage, json_pointer
from shared.json_limits import ItemLimit, JsonLimits, item_limits
from shared.models import MAILGATE_ID_ARG, MAX_MESSAGE_ID_LENGTH
from shared.sendgrid_v3.error_format import too_many_message, validation_problems
from shared.sendgrid_v3.schema import (
    MAX_CUSTOM_ARGS_BYTES,
    MAX_RECIPIENTS,
    MailSend,
    custom_args_size,
)

# The longest id the gateway may add, so the size check holds whatever the id.
_LONGEST_ID_ARG = {MAILGATE_ID_ARG: "0" * MAX_MESSAGE_ID_LENGTH}
_RESERVED = (
    f"{MAILGATE_ID_ARG} is reserved: the gateway puts its message id there, in every "
    "personalization. Use another name."
)
_NO_ROOM = (
    "The combined size of both global and personalization custom arguments may not exceed "
    f"10,000 bytes per personalization, including the {MAILGATE_ID_ARG} the gateway adds "
    "(about 80 bytes)."
)


# What a v3 Mail Send body may hold, checked on its bytes before it is parsed: the bounds of
# MailSend's lists and maps, and the recipients of all personalizations together.
MAIL_SEND_LIMITS = JsonLimits(
    each=item_limits(MailSend, too_many_message),
    together=(
        (
            frozenset(("personalizations", "*", kind) for kind in ("to", "cc", "bcc")),
            ItemLimit(
                MAX_RECIPIENTS,
                "There is a limit of 1000 total recipients (to + cc + bcc) per request.",
                is_object=False,
                pointer=json_pointer(["personalizations"]),
            ),
        ),
    ),
)


def parse_mail_send(body: bytes, now: datetime) -> tuple[dict[str, Any], MailSend]:
    """The body as the client sent it, and its model; InvalidMessage if it cannot be sent.

    `send_at` is checked against `now`, the moment the gateway accepts the mail.
    """
    problem = MAIL_SEND_LIMITS.first_problem(body)
    if problem is not None:
        raise InvalidMessage("the mail has 1 invalid field(s)", (problem,))
    document = _decode(body)
    try:
        mail = MailSend.model_validate(document, strict=True, context={"now": now.timestamp()})
    except ValidationError as error:
        problems = validation_problems(error)
        raise InvalidMessage(f"the mail has {len(problems)} invalid field(s)", problems) from None
    problems = _custom_args_problems(mail)
    if problems:
        raise InvalidMessage(f"the mail has {len(problems)} invalid field(s)", problems)
    # Validated as an object, so the decoded document is one.
    return dict(document), mail


def _decode(body: bytes) -> Any:
    # pydantic's parser, not the json module's: it refuses what the queue message could not
    # carry later (a lone surrogate escape, NaN, Infinity) and bounds nesting without recursing.
    try:
        return from_json(body, allow_inf_nan=False)
    except ValueError:
        raise InvalidMessage("Bad Request: the body is not valid UTF-8 JSON.") from None


def _custom_args_problems(mail: MailSend) -> tuple[FieldProblem, ...]:
    """Refuse a caller's own mailgate_id, and custom_args that leave no room for the gateway's."""
    problems: dict[str, str] = {}
    if MAILGATE_ID_ARG in (mail.custom_args or {}):
        problems[json_pointer(["custom_args", MAILGATE_ID_ARG])] = _RESERVED
    for index, personalization in enumerate(mail.personalizations):
        own = personalization.custom_args or {}
        if MAILGATE_ID_ARG in own:
            problems[json_pointer(["personalizations", index, "custom_args", MAILGATE_ID_ARG])] = (
                _RESERVED
            )
        # What SendGrid will measure: the global args, this personalization's over them, the id.
        merged = {**(mail.custom_args or {}), **own, **_LONGEST_ID_ARG}
        if custom_args_size(merged) >= MAX_CUSTOM_ARGS_BYTES:
            path: list[str | int] = ["custom_args"]
            if own:
                path = ["personalizations", index, "custom_args"]
            problems.setdefault(json_pointer(path), _NO_ROOM)
    return tuple(FieldProblem(pointer, detail) for pointer, detail in problems.items())
