"""The app refuses to start on a setting App Service could not resolve, naming it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.infra.venvs import ROOT

REFERENCE = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/sendgrid-api-key/)"


def test_should_stop_at_start_naming_an_unresolved_key_vault_reference() -> None:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SENDGRID_", "Azure", "LOCAL_"))
    }
    environment.update(
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "ALLOWED_SENDERS": "@example.com",
            "SENDGRID_API_KEY": REFERENCE,
        }
    )

    started = subprocess.run(
        [sys.executable, "-m", "devstack.host", "--port", "0", "--environment-only"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    output = started.stdout + started.stderr
    assert started.returncode == 1, output
    assert "SENDGRID_API_KEY: unresolved Key Vault reference" in output
    assert "listening" not in output.lower()
