"""The providers a mail can go out by: what each can carry, and which one an attempt uses.

Never silently different: a provider that cannot carry a field a mail uses never gets that
mail. What each carries (docs/providers.md has the whole table):

    sendgrid   everything, from both routes
    smtp       a `/api/v1/messages` mail without template_id, template_data, send_at,
               categories or custom_args (SendGrid's own features, which no relay has);
               never a `/api/v3/mail/send` body
    acs        as smtp, and only from a sender of ACS_EMAIL_SENDERS (ACS sends from its
               connected domains only), without a display name for the sender (ACS shows the
               one its sender username has), a Content-ID on a non-inline attachment, more than
               50 recipients, or more than ACS's 10 MB a request

A mail that no provider of MAIL_PROVIDERS can carry is refused when it is submitted (422,
naming the fields); one queued before MAIL_PROVIDERS changed is dead-lettered (`no_provider`).

Which provider an attempt uses, deterministically, among the mail's eligible providers (those
of MAIL_PROVIDERS that can carry it, in that order):

- attempt 1 uses the first;
- a retryable failure of provider P moves the next attempt to the eligible provider after P,
  and after the last back to the first: with `sendgrid,smtp`, attempts alternate, and a
  provider that answers again gets its mail back;
- an ambiguous failure (P may have taken the mail) keeps the next attempt on P, unless
  FAILOVER_ON_AMBIGUOUS is true: another provider would send a second copy if P did send;
- a permanent failure is the mail's own (or needs an operator): it is dead-lettered, on no
  other provider.

The envelope of each retry names the provider its attempt uses, so the choice survives any
worker; a provider it names that is no longer eligible gives way to the first that is. A
provider whose circuit breaker is open (shared/breaker.py) is passed over for the next eligible
one, as after a retryable failure (shared/delivery.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from shared.acs_client import ACS_MAX_RECIPIENTS, ACS_MAX_REQUEST_BYTES, AcsSender
from shared.errors import FieldProblem, NotDeliverable
from shared.models import MailRequest, QueueEnvelope
from shared.sendgrid_client import SendGridClient, build_payload
from shared.settings import Settings, sender_allowed
from shared.smtp_client import SmtpSender

SENDGRID = "sendgrid"
SMTP = "smtp"
ACS = "acs"
# SendGrid features a relay has no place for; the pointer and what it is.
_SENDGRID_ONLY_FIELDS = (
    ("template_id", "a SendGrid dynamic template"),
    ("template_data", "a SendGrid template's data"),
    ("send_at", "SendGrid's scheduled sending"),
    ("categories", "SendGrid's categories"),
    ("custom_args", "SendGrid's custom arguments"),
)


class MailSender(Protocol):
    """What delivery needs from a provider: send one mail (its body loaded), return the
    provider's id for it, or raise a DeliveryError."""

    def send(self, envelope: QueueEnvelope) -> str | None: ...


class SendGridSender:
    """The `sendgrid` provider: a mail as a v3 Mail Send body, through SendGridClient."""

    def __init__(self, client: SendGridClient) -> None:
        self._client = client

    def send(self, envelope: QueueEnvelope) -> str | None:
        """POST the mail's v3 body; SendGrid's X-Message-Id."""
        return self._client.send(build_payload(envelope))

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()


def senders_from_settings(settings: Settings) -> dict[str, MailSender]:
    """A sender for each provider of MAIL_PROVIDERS."""
    senders: dict[str, MailSender] = {}
    for name in settings.mail_providers:
        if name == SENDGRID:
            senders[name] = SendGridSender(SendGridClient.from_settings(settings))
        elif name == SMTP:
            senders[name] = SmtpSender.from_settings(settings)
        elif name == ACS:
            senders[name] = AcsSender.from_settings(settings)
    return senders


def cannot_carry(
    provider: str,
    request: MailRequest | None,
    sendgrid_body: Any = None,
    *,
    acs_senders: Sequence[str] | None = None,
) -> tuple[FieldProblem, ...]:
    """The fields of a mail that `provider` cannot carry, each with why; () when it can.

    `acs_senders`: ACS_EMAIL_SENDERS, the senders acs may send for (None: not checked)."""
    if provider == SENDGRID:
        return _non_ascii_addresses(request) if sendgrid_body is None else ()
    if request is None or sendgrid_body is not None:
        return (
            FieldProblem(
                "#", f"a SendGrid v3 Mail Send body goes to SendGrid only, not {provider}"
            ),
        )
    problems = tuple(
        FieldProblem(f"#/{name}", f"{provider} cannot carry {what}: SendGrid only")
        for name, what in _SENDGRID_ONLY_FIELDS
        if getattr(request, name)
    )
    return problems + _acs_limits(request, acs_senders) if provider == ACS else problems


def _acs_limits(request: MailRequest, senders: Sequence[str] | None) -> tuple[FieldProblem, ...]:
    # ACS sends only from the MailFrom addresses of the domains connected to the resource, and
    # shows the display name configured for that sender username, not one of the request's
    # (the REST spec's EmailMessage.senderAddress is an address only): a mail from elsewhere
    # would be refused at delivery, one with another name sent under ACS's name.
    problems: list[FieldProblem] = []
    if senders is not None and not sender_allowed(request.from_.email, tuple(senders)):
        problems.append(
            FieldProblem("#/from", "acs sends only from the senders of ACS_EMAIL_SENDERS")
        )
    if request.from_.name:
        problems.append(
            FieldProblem(
                "#/from/name",
                "acs cannot carry a sender's display name: ACS shows its sender username's",
            )
        )
    problems.extend(
        FieldProblem(
            f"#/attachments/{i}/content_id",
            "acs cannot carry a Content-ID on an attachment that is not inline",
        )
        for i, a in enumerate(request.attachments)
        if a.content_id and a.disposition != "inline"
    )
    if len(request.to) + len(request.cc) + len(request.bcc) > ACS_MAX_RECIPIENTS:
        problems.append(
            FieldProblem("#/to", f"acs takes at most {ACS_MAX_RECIPIENTS} recipients a mail")
        )
    size = sum(len(a.content) for a in request.attachments)
    size += len((request.text or "").encode()) + len((request.html or "").encode())
    if size > ACS_MAX_REQUEST_BYTES:
        problems.append(
            FieldProblem("#/attachments", "acs takes at most 10 MB a mail, attachments included")
        )
    return tuple(problems)


def _non_ascii_addresses(request: MailRequest | None) -> tuple[FieldProblem, ...]:
    # SendGrid's Mail Send takes ASCII addresses only: an internationalised domain in its
    # punycode form (shared/models.py writes it so), but a local part beyond ASCII (SMTPUTF8)
    # not at all; it would be refused at delivery and dead-lettered (shared/sendgrid_v3/
    # schema.py _check_email, from SendGrid's published schema). A relay that offers SMTPUTF8
    # can carry one.
    if request is None:
        return ()
    fields = [("from", request.from_), ("reply_to", request.reply_to)]
    fields += [
        (f"{name}/{i}", a)
        for name in ("to", "cc", "bcc")
        for i, a in enumerate(getattr(request, name))
    ]
    return tuple(
        FieldProblem(
            f"#/{pointer}",
            f"{SENDGRID} cannot carry an address whose part before the @ is not ASCII",
        )
        for pointer, address in fields
        if address is not None and not address.email.isascii()
    )


def eligible(
    providers: Sequence[str],
    envelope: QueueEnvelope,
    *,
    acs_senders: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """The providers, in order, that can carry the envelope's mail (its body loaded)."""
    return tuple(
        p
        for p in providers
        if not cannot_carry(p, envelope.message, envelope.sendgrid, acs_senders=acs_senders)
    )


def check_deliverable(
    providers: Sequence[str],
    request: MailRequest | None,
    sendgrid_body: Any = None,
    *,
    acs_senders: Sequence[str] | None = None,
) -> None:
    """Return if a provider of `providers` can carry the mail; else NotDeliverable naming the
    fields that keep it from each."""
    problems: list[FieldProblem] = []
    for provider in providers:
        found = cannot_carry(provider, request, sendgrid_body, acs_senders=acs_senders)
        if not found:
            return
        problems.extend(p for p in found if p not in problems)
    raise NotDeliverable(
        f"no provider in this gateway's MAIL_PROVIDERS ({', '.join(providers)}) can carry this "
        "mail as it is",
        problems,
    )


def provider_for_attempt(candidates: Sequence[str], named: str | None) -> str:
    """The provider an attempt uses: the one its envelope names while it is a candidate, else
    the first candidate (there must be one)."""
    return named if named is not None and named in candidates else candidates[0]


def next_provider(
    candidates: Sequence[str], failed: str, *, ambiguous: bool, failover_on_ambiguous: bool
) -> str:
    """The provider the attempt after a retryable failure of `failed` uses."""
    if failed not in candidates:
        return candidates[0]
    if ambiguous and not failover_on_ambiguous:
        return failed
    return candidates[(candidates.index(failed) + 1) % len(candidates)]


def usable(senders: Mapping[str, MailSender], providers: Sequence[str]) -> tuple[str, ...]:
    """The providers of `providers` that have a sender, in order."""
    return tuple(p for p in providers if p in senders)
