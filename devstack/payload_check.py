"""Send the payloads the gateway builds for representative messages to a SendGrid-compatible API.

    python -m devstack.payload_check [BASE_URL] [API_KEY]

Point it at Prism serving SendGrid's own schema (a validating mock) to check that SendGrid
would accept every shape of payload the gateway sends; it exits 1 if any is refused.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from shared.errors import DeliveryError
from shared.models import MailRequest, QueueEnvelope
from shared.sendgrid_client import SendGridClient, build_payload

_ATTACHMENT = base64.b64encode(b"hello").decode()
# SendGrid's published schema requires subject and content even with a template_id, though
# SendGrid itself takes a template-only mail (its dynamic template examples send one), and the
# API promises to as well. A validating mock refuses this sample; that refusal is expected.
SCHEMA_STRICTER_THAN_SENDGRID = {"template only"}


def sample_messages(now: datetime) -> dict[str, dict[str, Any]]:
    """Messages covering every field and form the API accepts."""
    minimal = {"from": "app@example.com", "to": ["a@example.org"], "subject": "Hi", "text": "x"}
    return {
        "text only": minimal,
        "html only": {**minimal, "text": None, "html": "<p>x</p>"},
        "everything": {
            "from": "App <app@example.com>",
            "to": ["Ann <ann@example.org>", {"email": "bob@example.org", "name": "Bob, Jr."}],
            "cc": ["carol@example.net"],
            "bcc": [{"email": "dee@example.net"}],
            "reply_to": "support@example.com",
            "subject": "Everything",
            "text": "plain",
            "html": "<p>html</p>",
            "headers": {"X-Order": "42", "List-Unsubscribe": "<mailto:u@example.com>"},
            "categories": ["orders", "receipts"],
            "custom_args": {"order": "42"},
            "send_at": (now + timedelta(hours=1)).isoformat(),
            "attachments": [
                {"filename": "a.txt", "content": _ATTACHMENT, "content_type": "text/plain"},
                {
                    "filename": "logo.png",
                    "content": _ATTACHMENT,
                    "content_type": "image/png",
                    "disposition": "inline",
                    "content_id": "logo",
                },
            ],
        },
        "template with subject and text": {
            **minimal,
            "template_id": "d-0123456789abcdef0123456789abcdef",
            "template_data": {"name": "Ann", "items": [1, 2]},
        },
        "template only": {
            "from": "app@example.com",
            "to": ["a@example.org"],
            "template_id": "d-0123456789abcdef0123456789abcdef",
            "template_data": {"name": "Ann"},
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Send each sample; print the outcome; 1 if any was refused."""
    args = list(sys.argv[1:] if argv is None else argv)
    base_url = args[0] if args else "http://127.0.0.1:4010"
    api_key = args[1] if len(args) > 1 else "SG.payload-check"
    now = datetime.now(timezone.utc)
    client = SendGridClient(base_url, api_key)
    refused = 0
    for name, fields in sample_messages(now).items():
        request = MailRequest.model_validate({k: v for k, v in fields.items() if v is not None})
        envelope = QueueEnvelope(id=f"check-{len(name)}", accepted_at=now, message=request)
        try:
            client.send(build_payload(envelope))
            print(f"accepted  {name}")
        except DeliveryError as error:
            if name in SCHEMA_STRICTER_THAN_SENDGRID:
                print(f"refused   {name} (expected from a schema mock: {error.reason})")
                continue
            refused += 1
            print(f"REFUSED   {name}: {error.reason}: {error.provider_error}")
        except httpx.HTTPError as error:
            print(f"cannot reach {base_url}: {error}", file=sys.stderr)
            return 2
    client.close()
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
