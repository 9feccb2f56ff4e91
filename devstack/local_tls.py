"""A local certificate authority and Azurite's server certificate, for storage over HTTPS.

The Azure SDKs send a token credential only over HTTPS, and Azurite accepts bearer tokens only
over HTTPS (its `--oauth basic` mode), so the identity mode of the local stack serves storage
with a certificate for 127.0.0.1 and localhost from a CA of its own (made with trustme); the
ACS Email stand-in serves the same certificate there (devstack/acs_standin). The
clients trust that CA through `SSL_CERT_FILE`, pointed at a bundle of certifi's CAs plus the
local one, so that trusting it takes nothing away (real SendGrid still verifies).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import certifi
import trustme

# The names Azurite is reached by; trustme puts both into the certificate's subjectAltName.
SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class LocalTls:
    """The files of the local CA: the server's chain and key, the CA, and the clients' bundle."""

    cert_chain: Path
    key: Path
    ca: Path
    ca_bundle: Path

    @classmethod
    def in_directory(cls, directory: Path) -> LocalTls:
        """Where the files live under `directory` (they may not exist yet)."""
        return cls(
            directory / "azurite-cert.pem",
            directory / "azurite-key.pem",
            directory / "ca.pem",
            directory / "ca-bundle.pem",
        )

    @classmethod
    def ensure(cls, directory: Path) -> LocalTls:
        """The CA and certificate under `directory`, made on first use and kept after.

        Kept, so that a CA someone chose to trust elsewhere (a browser, Storage Explorer) stays
        the one in use. The bundle is written again each time: certifi's CAs change with it.
        """
        files = cls.in_directory(directory)
        if not all(path.is_file() for path in (files.cert_chain, files.key, files.ca)):
            directory.mkdir(parents=True, exist_ok=True)
            ca = trustme.CA(organization_name="mailgate local stack")
            server = ca.issue_cert(*SERVER_NAMES)
            # The key first, readable by its owner only: it is what the certificate vouches for.
            files.key.touch(mode=0o600)
            server.private_key_pem.write_to_path(str(files.key))
            files.cert_chain.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
            ca.cert_pem.write_to_path(str(files.ca))
        files.ca_bundle.write_bytes(Path(certifi.where()).read_bytes() + files.ca.read_bytes())
        return files
