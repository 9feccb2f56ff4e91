"""Sample Mail Send payloads shared by the SendGrid stand-in tests."""

from __future__ import annotations

import base64
from typing import Any

NOW = 1_790_000_000  # a fixed "now" so send_at checks do not depend on the clock
PDF_BYTES = b"%PDF-1.4\n% mailgate test attachment\n"
PNG_BYTES = b"\x89PNG\r\n\x1a\n fake image"


def valid_payload() -> dict[str, Any]:
    """A realistic mail as the gateway would send it, valid for SendGrid."""
    return {
        "personalizations": [
            {
                "to": [
                    {"email": "ann.lee@example.com", "name": "Ann Lee"},
                    {"email": "bob@example.org"},
                ],
                "cc": [{"email": "carol@example.net", "name": "Carol"}],
                "bcc": [{"email": "audit@example.com"}],
                "custom_args": {"mailgate_id": "mg_01HZX3Q9V7"},
                "send_at": NOW + 3600,
            }
        ],
        "from": {"email": "noreply@mail.example.com", "name": "Example Shop"},
        "reply_to": {"email": "support@example.com", "name": "Support"},
        "subject": "Your order 1042 has shipped",
        "content": [
            {"type": "text/plain", "value": "Hello Ann, your order has shipped."},
            {"type": "text/html", "value": "<p>Hello Ann, your order has <b>shipped</b>.</p>"},
        ],
        "attachments": [
            {
                "content": base64.b64encode(PDF_BYTES).decode(),
                "type": "application/pdf",
                "filename": "invoice-1042.pdf",
                "disposition": "attachment",
            },
            {
                "content": base64.b64encode(PNG_BYTES).decode(),
                "type": "image/png",
                "filename": "logo.png",
                "disposition": "inline",
                "content_id": "logo",
            },
        ],
        "headers": {"X-Mailgate-Tenant": "shop-eu"},
        "categories": ["transactional", "shipping"],
        "custom_args": {"tenant": "shop-eu"},
        "asm": {"group_id": 12345, "groups_to_display": [12345]},
        "ip_pool_name": "transactional",
        "mail_settings": {
            "sandbox_mode": {"enable": False},
            "bypass_list_management": {"enable": False},
            "footer": {"enable": False},
        },
        "tracking_settings": {
            "click_tracking": {"enable": True, "enable_text": False},
            "open_tracking": {"enable": True},
            "subscription_tracking": {"enable": False},
        },
    }


def minimal_payload() -> dict[str, Any]:
    """The smallest mail SendGrid accepts."""
    return {
        "personalizations": [{"to": [{"email": "ann@example.com"}]}],
        "from": {"email": "noreply@example.com"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hello"}],
    }
