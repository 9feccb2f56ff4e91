"""SendGrid-style error bodies, and pydantic validation errors worded as SendGrid words them.

Validation errors become the gateway's ``FieldProblem``s (a JSON Pointer and a message), and
every ``FieldProblem`` becomes one ``{"message", "field", "help"}`` entry, ``field`` being the
dotted path with list indexes (``#/personalizations/0/to/0/email`` becomes
``personalizations.0.to.0.email``), as in SendGrid's answers. The same conversion serves the
gateway's own refusals of a v3 request, whatever check made them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from shared.errors import FieldProblem, json_pointer, shortened


def error_body(message: str, field_path: str | None = None) -> dict[str, Any]:
    """Build a SendGrid error body with one entry."""
    return {"errors": [{"message": message, "field": field_path, "help": None}]}


UNAUTHORIZED_BODY = error_body("The provided authorization grant is invalid, expired, or revoked")

# SendGrid's answer to a `from` that is not a verified Sender Identity: a 403 (Twilio's error
# 60222, "HTTP status: 403") with this body, as SendGrid's clients print it (sendgrid/sendgrid-ruby
# pull request 489 quotes the response whole).
UNVERIFIED_SENDER_STATUS = 403
UNVERIFIED_SENDER_BODY = error_body(
    "The from address does not match a verified Sender Identity. Mail cannot be sent until this "
    "error is resolved. Visit https://sendgrid.com/docs/for-developers/sending-email/"
    "sender-identity/ to see the Sender Identity requirements",
    "from",
)

# The custom error type whose context carries several (relative path, message) problems, so a
# single cross-field validator can report one error entry per problem.
PROBLEMS_ERROR = "sendgrid_problems"

Problem = tuple[tuple[str | int, ...], str]


def problems_error(problems: list[Problem]) -> PydanticCustomError:
    """Bundle cross-field problems into one pydantic error that validation_errors expands."""
    return PydanticCustomError(
        PROBLEMS_ERROR, "{count} problem(s)", {"count": len(problems), "problems": problems}
    )


# How much of a client's value a message quotes.
ECHOED_CHARS = 100

_DICT_FIELDS = frozenset(
    {"headers", "custom_args", "substitutions", "sections", "dynamic_template_data"}
)

_TYPE_NAMES = {
    "string_type": "string",
    "int_type": "integer",
    "bool_type": "boolean",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
}

# Doubled braces: every message below goes through str.format.
_EMAIL_EXAMPLE = (
    'e.g. {{"email": "example@example.com"}} or '
    '{{"email": "example@example.com", "name": "Example Recipient"}}'
)

# Messages from SendGrid's Mail Send error reference, keyed by (error kind, schema path).
_MESSAGES: dict[tuple[str, str], str] = {
    ("missing", "personalizations"): "You must have at least one personalization.",
    ("too_short", "personalizations"): "You must have at least one personalization.",
    ("too_long", "personalizations"): (
        "The personalization block is limited to 1000 personalizations per API request. You have "
        "provided {actual} personalizations. Please consider splitting this into multiple "
        "requests and resending your request."
    ),
    (
        "missing",
        "personalizations.to",
    ): "The to parameter is required for all personalization objects.",
    ("too_short", "personalizations.to"): (
        "The to array must at least have an email parameter with a valid email address and it "
        "may also contain a name parameter. " + _EMAIL_EXAMPLE
    ),
    ("missing", "personalizations.to.email"): (
        'Each "to" object must at least have an email address and may also contain a name. '
        + _EMAIL_EXAMPLE
    ),
    ("missing", "personalizations.cc.email"): (
        "Each recipient object must at least have an email address and may also contain a name. "
        + _EMAIL_EXAMPLE
    ),
    ("missing", "personalizations.bcc.email"): (
        "Each recipient object must at least have an email address and may also contain a name. "
        + _EMAIL_EXAMPLE
    ),
    ("missing", "from"): (
        "The from object must be provided for every email send. It is an object that requires "
        "the email parameter, but may also contain a name parameter. " + _EMAIL_EXAMPLE
    ),
    ("missing", "from.email"): (
        "The from object must at least have an email parameter with a valid email address and may "
        "also contain a name parameter. " + _EMAIL_EXAMPLE
    ),
    ("missing", "reply_to.email"): (
        "The reply_to object, when used, must at least have an email parameter with a valid email "
        "address and it may also contain a name parameter. " + _EMAIL_EXAMPLE
    ),
    ("missing", "reply_to_list.email"): "The reply_to_list email parameter is required.",
    (
        "too_long",
        "reply_to_list",
    ): "There is a limit of 1000 reply_to emails per mail/send request.",
    (
        "too_short",
        "subject",
    ): "The subject of your email must be a string at least one character in length.",
    ("too_short", "personalizations.subject"): (
        "The subject of your email must be a string at least one character in length."
    ),
    (
        "type",
        "subject",
    ): "The subject of your email must be a string at least one character in length.",
    (
        "missing",
        "content.type",
    ): "A content type is required, this tells email clients how to display the email.",
    (
        "too_short",
        "content.type",
    ): "Your content type must be a string with length of at least one character.",
    (
        "missing",
        "content.value",
    ): "A content value is required, this is the content of the email you are sending.",
    (
        "too_short",
        "content.value",
    ): "The content value must be a string at least one character in length.",
    (
        "missing",
        "attachments.content",
    ): "The attachment content must be a string at least one character in length.",
    ("too_short", "attachments.content"): (
        "The attachment content must be a string at least one character in length."
    ),
    ("missing", "attachments.filename"): "filename is required.",
    ("too_short", "attachments.filename"): "filename is required.",
    ("type", "attachments.filename"): "The filename of your attachment must be a string.",
    (
        "too_short",
        "attachments.type",
    ): "The attachment type must be a string and at least one character in length.",
    ("type", "attachments.content_id"): "The content ID of your attachment must be a string.",
    ("literal", "attachments.disposition"): (
        'The disposition of your attachment can be either "inline" or "attachment". '
        "You provided {input}."
    ),
    ("too_long", "categories"): (
        "There is a limit of 10 categories for each email that is sent. "
        "You provided {actual} categories."
    ),
    (
        "string_too_long",
        "categories",
    ): "Each category must not be longer than 255 characters. {input} exceeds this limit",
    ("type", "categories"): "Categories must be an array of strings.",
    ("type", "headers.*"): "The header values must be strings.",
    ("type", "personalizations.headers.*"): "All values of the headers object must be strings.",
    ("type", "custom_args.*"): "All values of custom arguments object must be strings",
    (
        "type",
        "personalizations.custom_args.*",
    ): "All values of custom arguments object must be strings",
    ("type", "personalizations.substitutions.*"): (
        "The substitution values must be an object of key/value pairs, "
        "where the values are all strings."
    ),
    ("too_long", "personalizations.substitutions"): "You are limited to 10,000 substitutions.",
    ("type", "sections.*"): "The section values must be strings.",
    ("type", "send_at"): (
        "The send_at parameter is expecting a Unix timestamp as an integer. We will send "
        "immediately if you include a send_at timestamp that is in the past."
    ),
    ("type", "personalizations.send_at"): (
        "The send_at parameter is expecting a Unix timestamp as an integer. We will send "
        "immediately if you include a send_at timestamp that is in the past."
    ),
    ("type", "batch_id"): "The batch_id must be a string.",
    ("type", "template_id"): "The template ID must be a string, you provided {input}.",
    ("type", "ip_pool_name"): "The name of your IP pool must be a string.",
    ("too_short", "ip_pool_name"): "The IP pool name must be between 2 and 64 characters long.",
    (
        "string_too_long",
        "ip_pool_name",
    ): "The IP pool name must be between 2 and 64 characters long.",
    ("range", "mail_settings.spam_check.threshold"): (
        "The spam check threshold is between 1 and 10, with the lower numbers being the most "
        "strict filtering."
    ),
    ("missing", "asm.group_id"): "The ASM group ID is required when asm is used.",
    ("type", "asm.group_id"): "The ASM group ID must be an integer.",
    ("type", "asm.groups_to_display"): "The ASM Group IDs to display must be an array of integers.",
    ("too_long", "asm.groups_to_display"): (
        "There is a limit of 25 unsubscribe groups that can be displayed to a user at a time."
    ),
}


_LENGTH_AND_RANGE_KINDS = {
    "too_short": "too_short",
    "string_too_short": "too_short",
    "too_long": "too_long",
    "string_too_long": "string_too_long",
    "missing": "missing",
    "literal_error": "literal",
    "greater_than_equal": "range",
    "less_than_equal": "range",
}


def too_many_message(path: Sequence[str], most: int, is_object: bool) -> str:
    """SendGrid's words for a list with too many items, where it has some; found on the raw body
    (shared/json_limits.py), before the items are counted: "more than `most`"."""
    dotted = ".".join(step for step in path if step != "*")
    template = _MESSAGES.get(("too_long", dotted))
    if template is not None:
        return template.format(actual=f"more than {most}", input="")
    what = "members" if is_object else "items"
    return f"The {dotted or 'request body'} may have at most {most} {what}."


def schema_path(loc: Sequence[str | int]) -> str:
    """Turn an error location into SendGrid's index-free path, e.g. personalizations.to.email."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int) or item == "[key]" or item.isdigit():
            continue
        if parts and parts[-1] in _DICT_FIELDS:
            parts.append("*")
            break
        parts.append(item)
    return ".".join(parts)


def _json_type(value: object) -> str:
    """Name the JSON type of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _echo(value: object) -> str:
    """A value as a message may quote it: short, whatever the client sent."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return shortened(str(value), ECHOED_CHARS)


def _message(error: Mapping[str, Any], loc: Sequence[str | int]) -> str:
    """Word one pydantic error the way SendGrid's reference words it."""
    kind = str(error["type"])
    path = schema_path(loc)
    value = error.get("input")
    if kind in _TYPE_NAMES:
        generic = f"Invalid type. Expected: {_TYPE_NAMES[kind]}, given: {_json_type(value)}."
        return _MESSAGES.get(("type", path), generic).format(input=_echo(value))
    if kind in _LENGTH_AND_RANGE_KINDS:
        template = _MESSAGES.get((_LENGTH_AND_RANGE_KINDS[kind], path))
        if template is not None:
            actual = len(value) if isinstance(value, list | str | dict) else ""
            return template.format(input=_echo(value), actual=actual)
        if kind == "missing":
            return f"The {path.rpartition('.')[2] or path} parameter is required."
    if kind == "extra_forbidden":
        return f"Additional property {loc[-1]} is not allowed."
    return str(error["msg"])


def _pointer(loc: Sequence[str | int]) -> str:
    """The JSON Pointer of an error location (pydantic's "[key]" marks a key, not a step)."""
    return json_pointer(item for item in loc if item != "[key]")


def sendgrid_field(pointer: str) -> str | None:
    """Name a field as SendGrid does: `#/personalizations/0/to` is `personalizations.0.to`."""
    steps = pointer.removeprefix("#").split("/")[1:]
    return ".".join(step.replace("~1", "/").replace("~0", "~") for step in steps) or None


def error_entry(problem: FieldProblem) -> dict[str, Any]:
    """One SendGrid error entry: the problem's message and the field it is about."""
    return {"message": problem.detail, "field": sendgrid_field(problem.pointer), "help": None}


def refusal_body(
    message: str, problems: Sequence[FieldProblem] = (), left_out: int = 0
) -> dict[str, Any]:
    """A SendGrid error body: one entry per problem, or one without a field for the message.

    Problems found but not listed (`left_out`) are counted in a last entry without a field.
    """
    if not problems:
        return error_body(message)
    entries = [error_entry(problem) for problem in problems]
    if left_out:
        entries.append(
            {
                "message": f"... and {left_out} more problem(s): only the first "
                f"{len(problems)} are listed.",
                "field": None,
                "help": None,
            }
        )
    return {"errors": entries}


def validation_problems(exc: ValidationError) -> tuple[FieldProblem, ...]:
    """Convert a ValidationError from MailSend into problems worded as SendGrid words them."""
    problems: list[FieldProblem] = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if error["type"] == PROBLEMS_ERROR:
            for relative, message in error["ctx"]["problems"]:
                problems.append(FieldProblem(_pointer([*loc, *relative]), message))
            continue
        problems.append(FieldProblem(_pointer(loc), _message(error, loc)))
    return tuple(problems)


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Convert a ValidationError from MailSend into SendGrid error entries, one per problem."""
    return [error_entry(problem) for problem in validation_problems(exc)]
