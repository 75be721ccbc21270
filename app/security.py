"""Key material: API key digests and the encryption of webhook signing secrets."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from app.config import Settings

API_KEY_PREFIX = "rrmm_"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


def page_headers(content_security_policy: str) -> dict[str, str]:
    """The headers of every HTML page we serve: never cached (a page may hold a credential
    or a person's data), never framed, never sent on as a referrer, no sniffing, and the
    page's own Content-Security-Policy."""
    return {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": content_security_policy,
    }


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


WEBHOOK_SECRETS_PURPOSE = "webhook-signing-secrets/v1"


class SecretBox:
    """Authenticated encryption (Fernet) of small secrets under a key derived for that purpose.

    While RRMM_SECRET_KEY is being rotated, `previous_key` (RRMM_SECRET_KEY_PREVIOUS) still
    decrypts; everything is encrypted under `secret_key` alone."""

    def __init__(
        self,
        secret_key: str,
        purpose: str = WEBHOOK_SECRETS_PURPOSE,
        *,
        previous_key: str | None = None,
    ) -> None:
        self._current = _fernet(secret_key, purpose)
        keys = [self._current] + ([_fernet(previous_key, purpose)] if previous_key else [])
        self._fernet = MultiFernet(keys)

    @classmethod
    def from_settings(cls, settings: Settings, purpose: str = WEBHOOK_SECRETS_PURPOSE) -> SecretBox:
        """The box of the configured keys: every caller that reads stored secrets uses this,
        so a rotation in progress never makes a secret unreadable."""
        return cls(settings.secret, purpose, previous_key=settings.previous_secret)

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with this RRMM_SECRET_KEY") from exc

    def is_current(self, token: bytes) -> bool:
        """Whether `token` is already encrypted under the current key (rotation skips it)."""
        try:
            self._current.decrypt(token)
        except InvalidToken:
            return False
        return True

    def rotate(self, token: bytes) -> bytes:
        """The same secret, encrypted under the current key. Raises `ValueError` if no
        configured key can decrypt it."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with this RRMM_SECRET_KEY") from exc


def _fernet(secret_key: str, purpose: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(derive_key(secret_key, purpose)))
