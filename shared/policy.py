"""Per-client policy: the SendGrid account's own controls, each used only by clients allowed it.

mailgate sends for many apps through one SendGrid account. Some fields of a mail act on that
account, not on the mail alone: they send to addresses the account holds as unsubscribed,
bounced or spam-reported, add a hidden recipient, override the account's footer and tracking,
pick its IP pool or unsubscribe group, join a batch anyone can cancel, or set headers that claim
who sent the mail or where its bounces go. A client may use such a field only when its row
lists the feature that unlocks it (`make client ... FEATURES=...`, `make client-features`);
otherwise the request is refused with 403 naming the field, whatever the field's value (an
`"enable": false` overrides the account's own setting as much as `true` does). A new client has
no feature, and neither has a row written before features existed.

Each feature unlocks exactly the field its name says (FEATURES). A few headers no feature
unlocks (FORBIDDEN_HEADERS). The module also counts the emails a request makes, as SendGrid
counts them: one per recipient (to, cc and bcc of every personalization), and one more per
personalization when the `bcc` mail setting is on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from shared.errors import FeatureNotAllowed, FieldProblem, InvalidMessage, json_pointer
from shared.models import MailRequest
from shared.sendgrid_v3.schema import MAX_RECIPIENTS, MailSend

# Every feature, and why it is the account's rather than the mail's (the refusal says this).
FEATURES: dict[str, str] = {
    "mail_settings.bypass_list_management": (
        "sends to addresses the shared account holds as unsubscribed, bounced or spam-reported"
    ),
    "mail_settings.bypass_spam_management": (
        "sends to addresses that reported the shared account's mail as spam"
    ),
    "mail_settings.bypass_bounce_management": (
        "sends to addresses that bounced the shared account's mail"
    ),
    "mail_settings.bypass_unsubscribe_management": (
        "sends to addresses that unsubscribed from the shared account's mail"
    ),
    "mail_settings.bcc": "sends a hidden copy of every email to one more address",
    "mail_settings.footer": "overrides the shared account's footer",
    "mail_settings.sandbox_mode": "has SendGrid check the mail and send nothing",
    "mail_settings.spam_check": (
        "overrides the shared account's spam check and where it posts reports"
    ),
    "tracking_settings": (
        "overrides the shared account's click, open, subscription and analytics tracking"
    ),
    "asm": "uses the shared account's unsubscribe groups",
    "ip_pool_name": "picks which of the shared account's IP pools sends, and whose reputation",
    "batch_id": "joins a batch of scheduled sends that can be paused or cancelled together",
    "headers.sender": "names who actually sent the mail (the Sender header)",
    "headers.return-path": "says where bounces go (the Return-Path header)",
    "headers.resent": "presents the mail as forwarded by someone (the Resent-* headers)",
    "headers.message-id": "sets the mail's identity, which threads and deduplicates it",
}
NO_FEATURES = "none"

# Sensitive headers no route reserves, by lower-case name; Resent-* by its prefix.
_HEADER_FEATURES = {
    "sender": "headers.sender",
    "return-path": "headers.return-path",
    "message-id": "headers.message-id",
}
_RESENT = "resent-"
# Headers no feature unlocks: X-SMTPAPI is SendGrid's SMTP API header, which can carry every
# control above at once; the others are what a receiving server adds, so a client could only
# forge them. (Received and DKIM-Signature are reserved by both routes already: 400.)
FORBIDDEN_HEADERS = frozenset(
    {
        "x-smtpapi",
        "authentication-results",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
    }
)
# The mail settings and top-level fields a feature of the same name unlocks.
_MAIL_SETTINGS = frozenset(
    name.removeprefix("mail_settings.") for name in FEATURES if name.startswith("mail_settings.")
)
_TOP_LEVEL = ("asm", "ip_pool_name", "batch_id")


def parse_features(text: str, setting: str = "FEATURES") -> frozenset[str]:
    """Comma-separated feature names (or `none`); ValueError naming an unknown one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == [NO_FEATURES]:
        return frozenset()
    for name in names:
        if name not in FEATURES:
            raise ValueError(
                f"{setting}: {name!r} is not a feature; the features are "
                f"{', '.join(FEATURES)} (or {NO_FEATURES})"
            )
    return frozenset(names)


def header_feature(name: str) -> str | None:
    """The feature a header needs, or None for a header any client may set."""
    lower = name.lower()
    if lower.startswith(_RESENT):
        return "headers.resent"
    return _HEADER_FEATURES.get(lower)


def check_allowed(problems: Iterable[FieldProblem], client_name: str) -> None:
    """Raise FeatureNotAllowed (403) with the problems, if there are any."""
    found = tuple(problems)
    if found:
        raise FeatureNotAllowed(
            f"the client {client_name!r} is not allowed {len(found)} field(s) the mail uses",
            found,
        )


def v3_refusals(mail: MailSend, features: frozenset[str]) -> list[FieldProblem]:
    """The fields of a v3 Mail Send body the client's features do not allow."""
    problems: list[FieldProblem] = []
    if mail.mail_settings is not None:
        for name in _given(mail.mail_settings.model_fields_set, mail.mail_settings.model_extra):
            if name in _MAIL_SETTINGS:
                problems += _needs(f"mail_settings.{name}", ["mail_settings", name], features)
            else:
                # A legacy setting the schema tolerates: the gateway cannot tell what it does.
                problems.append(
                    FieldProblem(
                        json_pointer(["mail_settings", name]),
                        "No client may use this mail setting: this gateway does not know it.",
                    )
                )
    if mail.tracking_settings is not None:
        tracking = mail.tracking_settings
        for name in _given(tracking.model_fields_set, tracking.model_extra):
            problems += _needs("tracking_settings", ["tracking_settings", name], features)
    for name in _TOP_LEVEL:
        if name in mail.model_fields_set:
            problems += _needs(name, [name], features)
    problems += _header_refusals(mail.headers or {}, ["headers"], features)
    for index, personalization in enumerate(mail.personalizations):
        problems += _header_refusals(
            personalization.headers or {}, ["personalizations", index, "headers"], features
        )
    return problems


def v1_refusals(request: MailRequest, features: frozenset[str]) -> list[FieldProblem]:
    """The fields of a v1 message the client's features do not allow (only headers can be)."""
    return _header_refusals(request.headers, ["headers"], features)


def bcc_setting_on(mail: MailSend) -> bool:
    """Whether the mail turns on the `bcc` mail setting (a copy of each email to one address)."""
    bcc = mail.mail_settings.bcc if mail.mail_settings is not None else None
    return bool(bcc is not None and bcc.enable)


def v3_emails(mail: MailSend) -> int:
    """The emails a v3 Mail Send body makes: its recipients, and a bcc setting's copies."""
    copies = len(mail.personalizations) if bcc_setting_on(mail) else 0
    return _recipients(mail) + copies


def v1_emails(request: MailRequest) -> int:
    """The emails a v1 message makes: one per recipient in to, cc and bcc."""
    return len(request.to) + len(request.cc) + len(request.bcc)


def check_v3_recipient_limit(mail: MailSend) -> None:
    """Refuse (400) a mail the bcc setting takes over SendGrid's 1,000 recipients per request.

    The schema counts to, cc and bcc alone; the setting's copy of each personalization is one
    more recipient.
    """
    if not bcc_setting_on(mail):
        return
    recipients = _recipients(mail)
    emails = recipients + len(mail.personalizations)
    if recipients <= MAX_RECIPIENTS < emails:
        raise InvalidMessage(
            "the mail has 1 invalid field(s)",
            (
                FieldProblem(
                    json_pointer(["mail_settings", "bcc"]),
                    f"There is a limit of {MAX_RECIPIENTS} total recipients (to + cc + bcc) per "
                    "request, and the bcc mail setting adds one to every personalization: "
                    f"{emails} in all.",
                ),
            ),
        )


def check_within_rate(emails: int, rate_per_minute: int, client_name: str, pointer: str) -> None:
    """Refuse (400) a request that makes more emails than the client may send in a minute.

    It could never pass, so 429 (try later) would be wrong; SendGrid answers its own limit on
    recipients per request with 400 on `personalizations`, and this is that limit, lowered.
    """
    if emails > rate_per_minute:
        raise InvalidMessage(
            "the mail has 1 invalid field(s)",
            (
                FieldProblem(
                    pointer,
                    f"The mail makes {emails} emails (one per recipient); the client "
                    f"{client_name!r} may send at most {rate_per_minute} per minute, so it can "
                    "never be accepted: split it into smaller requests.",
                ),
            ),
        )


def _recipients(mail: MailSend) -> int:
    # MailSend.recipient_count builds a list per personalization; this only adds lengths.
    return sum(len(p.to) + len(p.cc or ()) + len(p.bcc or ()) for p in mail.personalizations)


def _given(fields_set: set[str], extra: Mapping[str, object] | None) -> list[str]:
    """The names a settings object was given, known ones and tolerated unknown ones, sorted."""
    return sorted(fields_set | set(extra or {}))


def _needs(feature: str, path: Sequence[str | int], features: frozenset[str]) -> list[FieldProblem]:
    if feature in features:
        return []
    return [
        FieldProblem(
            json_pointer(path),
            f"This field {FEATURES[feature]}: the client needs the feature {feature!r}, "
            "which the gateway's operator grants.",
        )
    ]


def _header_refusals(
    headers: Mapping[str, str], path: Sequence[str | int], features: frozenset[str]
) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    for name in headers:
        if name.lower() in FORBIDDEN_HEADERS:
            problems.append(
                FieldProblem(
                    json_pointer([*path, name]),
                    "No client may set this header: it would carry or forge the account's "
                    "controls or a receiving server's checks.",
                )
            )
            continue
        feature = header_feature(name)
        if feature is not None:
            problems += _needs(feature, [*path, name], features)
    return problems
