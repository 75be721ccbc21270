"""Key material: API key digests and the encryption of webhook signing secrets."""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

API_KEY_PREFIX = "rrmm_"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


def new_api_key() -> str:
    """A fresh API key: 256 random bits behind a recognisable prefix (secret scanners)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 is enough here: keys are 256-bit random, so there is nothing to brute-force."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def derive_key(secret_key: str, purpose: str) -> bytes:
    """A 32-byte sub-key of RRMM_SECRET_KEY for one purpose, so no two uses share a key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"rrmm", info=purpose.encode())
    return hkdf.derive(secret_key.encode())


class SecretBox:
    """Authenticated encryption (Fernet) of small secrets under a key derived for that purpose."""

    def __init__(self, secret_key: str, purpose: str = "webhook-signing-secrets/v1") -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(derive_key(secret_key, purpose)))

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with this RRMM_SECRET_KEY") from exc
