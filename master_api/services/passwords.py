"""Password hashing with Argon2id (a slow, memory-hard KDF; costs from Settings)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from master_api.settings import Settings

__all__ = ["Passwords"]

#: Passwords shorter than this are refused when set (the CLI and the users API).
MIN_PASSWORD_LENGTH = 10


class Passwords:
    """Hash and verify passwords. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.password_time_cost,
            memory_cost=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
        )
        # Verified against when the user does not exist, so a login takes as long for an
        # unknown name as for a wrong password (no user enumeration by timing).
        self._dummy = self._hasher.hash("not a real password, only spends time")

    def hash(self, password: str) -> str:
        """An encoded Argon2id hash of ``password`` (salted; embeds its parameters)."""
        return self._hasher.hash(password)

    def verify(self, encoded: str | None, password: str) -> bool:
        """True when ``password`` matches ``encoded``; None ``encoded`` spends the same time
        and returns False. A malformed hash is a mismatch, never an exception."""
        try:
            return self._hasher.verify(encoded or self._dummy, password) and encoded is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, encoded: str) -> bool:
        """True when ``encoded`` was made with other costs than the current settings."""
        return self._hasher.check_needs_rehash(encoded)


def check_password_strength(password: str) -> str | None:
    """Why ``password`` is refused, or None when acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password must have at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > 1024:
        return "password must have at most 1024 characters"
    return None
