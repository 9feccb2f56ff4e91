"""SendGrid's v3 Mail Send request, as the gateway accepts it and the local stand-in checks it.

One set of models serves both: ``POST /api/v3/mail/send`` validates a client's body with them,
and the stand-in validates what the gateway delivers with the same ones.

Modules: ``schema`` (the request as strict pydantic models with SendGrid's documented limits,
``validate_mail_send``), ``error_format`` (SendGrid's error body ``{"errors": [{"message",
"field", "help"}]}``, and validation errors worded as SendGrid words them).
"""
