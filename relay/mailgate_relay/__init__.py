"""mailgate-relay: SMTP in, mailgate's HTTP API out, for apps that only speak SMTP."""
