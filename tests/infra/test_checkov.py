"""checkov on infra/: no failed check, every skip written next to its resource with a reason."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tests.infra.conftest import INFRA, bicep_files

SKIP_COMMENT = re.compile(r"//\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")
# checkov must have evaluated these, so that a parse gap cannot pass as "nothing failed".
KEY_RESOURCES = {
    "Microsoft.Web/serverfarms.plan",
    "Microsoft.Web/sites.functionApp",
    "Microsoft.Storage/storageAccounts.storage",
    "Microsoft.KeyVault/vaults.vault",
    "Microsoft.KeyVault/vaults/secrets.secret",
}


def results(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = report.get("results", {}).get(kind, [])
    return found


def test_should_pass_every_checkov_check(checkov_report: dict[str, Any]) -> None:
    failed = [
        f"{c['check_id']} {c['check_name']} on {c['resource']} ({c['file_path']})"
        for c in results(checkov_report, "failed_checks")
    ]
    assert failed == [], "checkov failed:\n" + "\n".join(failed)
    assert checkov_report["summary"]["failed"] == 0


def test_should_parse_every_file_and_evaluate_the_key_resources(
    checkov_report: dict[str, Any],
) -> None:
    summary = checkov_report["summary"]
    assert summary["parsing_errors"] == 0
    evaluated = {
        c["resource"]
        for kind in ("passed_checks", "failed_checks", "skipped_checks")
        for c in results(checkov_report, kind)
    }
    assert evaluated >= KEY_RESOURCES, f"checkov did not evaluate {KEY_RESOURCES - evaluated}"
    scanned_files = {c["file_path"].lstrip("/") for c in results(checkov_report, "passed_checks")}
    assert len(scanned_files) >= 3, scanned_files
    assert summary["passed"] >= 20


def test_should_skip_only_where_the_source_says_why(checkov_report: dict[str, Any]) -> None:
    written: Counter[tuple[str, str]] = Counter()
    for path in bicep_files():
        for line in path.read_text(encoding="utf-8").splitlines():
            if match := SKIP_COMMENT.search(line):
                check_id, reason = match.group(1), (match.group(2) or "").strip()
                relative = path.relative_to(INFRA).as_posix()
                assert len(reason) >= 20, f"{relative}: skip of {check_id} needs a reason"
                written[(relative, check_id)] += 1
    skipped = Counter(
        (c["file_path"].lstrip("/"), c["check_id"])
        for c in results(checkov_report, "skipped_checks")
    )
    # A skip comment that checkov did not use is stale: the check passes now, or moved.
    assert skipped == written
