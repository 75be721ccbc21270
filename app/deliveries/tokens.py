"""Acknowledgement tokens: one per delivery, signed, opaque, verifiable without the database.

Layout (then base64url, no padding): version (1 byte) | key id (1) | delivery id (8) |
expiry as Unix seconds (5) | HMAC-SHA256 over the previous bytes, truncated to 16 bytes.
Only an opaque row id is inside: no member, no address. Keys are derived from
RRMM_SECRET_KEY per key id, so a key can be retired by rotating the id. While
RRMM_SECRET_KEY itself is replaced, keys derived from RRMM_SECRET_KEY_PREVIOUS (same ids)
still verify, so links already sent keep working until they expire.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from app.config import Settings
from app.security import derive_key

_VERSION = 1
_BODY = struct.Struct(">BBQ5s")
_MAC_BYTES = 16
_CANONICAL = re.compile(r"[A-Za-z0-9_-]{42}")  # 31 bytes, base64url, unpadded


class InvalidToken(Exception):
    """Tampered, expired, signed with an unknown key, or not a token at all."""


@dataclass(frozen=True)
class AckClaims:
    delivery_id: int
    expires_at: datetime
    key_id: int


class AckTokenSigner:
    """Signs with `current_key_id` under `secret_key`; verifies with any id in
    `accepted_key_ids`, under `secret_key` or (during a rotation) `previous_secret_key`."""

    def __init__(
        self,
        secret_key: str,
        *,
        current_key_id: int = 1,
        accepted_key_ids: tuple[int, ...] = (),
        previous_secret_key: str | None = None,
    ) -> None:
        ids = {current_key_id, *accepted_key_ids}
        roots = [secret_key] + ([previous_secret_key] if previous_secret_key else [])
        self.current_key_id = current_key_id
        # Current root first: signing takes the first key of the current id.
        self._keys = {kid: [derive_key(root, f"ack-tokens/{kid}") for root in roots] for kid in ids}

    def sign(self, delivery_id: int, expires_at: datetime) -> str:
        expiry = int(expires_at.timestamp()).to_bytes(5, "big")
        body = _BODY.pack(_VERSION, self.current_key_id, delivery_id, expiry)
        mac = hmac.new(self._keys[self.current_key_id][0], body, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(body + mac[:_MAC_BYTES]).decode().rstrip("=")

    def verify(self, token: str, *, now: datetime | None = None) -> AckClaims:
        if not _CANONICAL.fullmatch(token):
            # One spelling per token: base64 decoding would also take padding, the standard
            # alphabet and stray low bits, giving a delivery many valid links.
            raise InvalidToken
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidToken from exc
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
            raise InvalidToken
        if len(raw) != _BODY.size + _MAC_BYTES:
            raise InvalidToken
        body, mac = raw[: _BODY.size], raw[_BODY.size :]
        version, key_id, delivery_id, expiry = _BODY.unpack(body)
        keys = self._keys.get(key_id)
        if version != _VERSION or keys is None:
            raise InvalidToken
        # Every candidate is computed and compared, so the time taken does not tell which
        # root (if any) signed the token.
        matches = [
            hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:_MAC_BYTES])
            for key in keys
        ]
        if not any(matches):
            raise InvalidToken
        expires_at = datetime.fromtimestamp(int.from_bytes(expiry, "big"), UTC)
        if expires_at <= (now or datetime.now(UTC)):
            raise InvalidToken
        return AckClaims(delivery_id=delivery_id, expires_at=expires_at, key_id=key_id)


def signer_from_settings(settings: Settings) -> AckTokenSigner:
    """Signs with RRMM_ACK_TOKEN_KEY_ID; also accepts RRMM_ACK_TOKEN_ACCEPTED_KEY_IDS and,
    while RRMM_SECRET_KEY is rotated, tokens signed under RRMM_SECRET_KEY_PREVIOUS, so keys
    can be rotated without breaking links already sent."""
    return AckTokenSigner(
        settings.secret,
        current_key_id=settings.ack_token_key_id,
        accepted_key_ids=tuple(settings.ack_token_accepted_key_ids),
        previous_secret_key=settings.previous_secret,
    )
