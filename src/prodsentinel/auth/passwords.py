"""Password hashing for people (argon2id, argon2-cffi's tuned defaults).

Why argon2 rather than the SHA-256 the API keys use: a password is chosen by a person and guessable,
so each guess must be expensive. A login for an unknown email verifies against :data:`_DUMMY_HASH`
so that both failures cost the same time and the answers cannot tell which emails exist.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ("MIN_PASSWORD_LENGTH", "hash_password", "verify_nothing", "verify_password")

MIN_PASSWORD_LENGTH = 8

_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("prodsentinel-no-such-user")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_nothing(password: str) -> bool:
    """Spend one verification's time for an unknown email; always False."""
    verify_password(_DUMMY_HASH, password)
    return False
