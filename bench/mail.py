"""The typical mail every scenario sends: about 2 KB of JSON, and its queue envelope."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

from shared.models import MailRequest, QueueEnvelope

SENDER_DOMAIN = "example.com"
ALLOWED_SENDERS = f"@{SENDER_DOMAIN}"

_TEXT = (
    "Hello Ada,\n\nYour invoice INV-2024-0042 for March is ready. The amount of EUR 1,280.00 "
    "will be collected from the account ending in 4417 on the 5th of next month. You can see "
    "every line of it, download a PDF copy and change how you pay in your account settings.\n\n"
    "If anything on it looks wrong, answer this mail before the collection date and we will "
    "look into it the same working day. Questions about your contract go to your account "
    "manager, who is copied on this message.\n\nKind regards,\nThe billing team\n"
)


def typical_message(number: int = 0) -> dict[str, Any]:
    """A transactional mail as an app would submit it: ~2 KB with text and HTML parts."""
    paragraphs = "".join(f"<p>{p}</p>" for p in _TEXT.split("\n\n"))
    lines = "".join(
        f"<tr><td>Service line {n}</td><td>1</td><td>EUR {n * 64},00</td></tr>" for n in range(1, 9)
    )
    html = f"<html><body>{paragraphs}<table>{lines}</table></body></html>"
    return {
        "from": f"Billing <billing@{SENDER_DOMAIN}>",
        "to": [f"Ada Lovelace <ada.{number}@example.org>"],
        "cc": [f"account.manager@{SENDER_DOMAIN}"],
        "reply_to": f"support@{SENDER_DOMAIN}",
        "subject": f"Your invoice INV-2024-{number:04d} is ready",
        "text": _TEXT,
        "html": html,
        "headers": {"X-Customer-Ref": f"C-{number:06d}"},
        "categories": ["billing", "invoice"],
        "custom_args": {"tenant": "acme", "invoice": f"INV-2024-{number:04d}"},
    }


def typical_body(number: int = 0) -> bytes:
    """The typical mail as a request body."""
    return json.dumps(typical_message(number)).encode()


def typical_envelope(number: int = 0, message_id: str | None = None) -> QueueEnvelope:
    """The envelope submission would queue for the typical mail."""
    return QueueEnvelope(
        id=message_id or str(uuid.uuid4()),
        accepted_at=datetime.now(timezone.utc),
        message=MailRequest.model_validate(typical_message(number)),
    )
