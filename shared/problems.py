"""RFC 9457 problem details for every refusal the API makes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from shared.errors import FieldProblem, RequestRejected

PROBLEM_CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True)
class Problem:
    """A problem+json response: status, explanation, one entry per offending field."""

    status: int
    detail: str
    errors: tuple[FieldProblem, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    # Problems found but not listed (RequestRejected keeps the first MAX_PROBLEMS_SHOWN).
    errors_left_out: int = 0

    @classmethod
    def from_rejection(cls, rejection: RequestRejected) -> Problem:
        """The problem a refused request gets."""
        return cls(
            rejection.status,
            rejection.detail,
            rejection.problems,
            dict(rejection.headers),
            rejection.problems_left_out,
        )

    def body(self) -> str:
        """The JSON document."""
        document: dict[str, Any] = {
            "type": "about:blank",
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            document["errors"] = [{"pointer": e.pointer, "detail": e.detail} for e in self.errors]
        return json.dumps(document)
