"""Passwords, session tokens and personal access tokens; who may do what.

- Passwords: scrypt (hashlib, n=2**14, r=8, p=1, a 16-byte salt), stored as
  ``scrypt$n$r$p$salt$hash``; compared in constant time.
- Session tokens (from sign-in): ``d7y_s.<payload>.<mac>``, the payload a base64url JSON
  ``{"uid", "exp"}``, the mac HMAC-SHA256 under a key kept in the data dir
  (``session.key``, created once, mode 0600). The user is looked up on every request,
  so disabling or deleting a user ends their sessions.
- Personal access tokens: ``d7y_pat_<random>``, shown once; only their SHA-256 is stored.
- RBAC: ``root`` may do everything; ``guest`` may read (GET). A token acts as its user,
  narrowed to its scopes: ``cluster`` covers clusters, schedulers, seed peers and the
  searches; ``job`` covers jobs. Tokens cannot manage users or tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_PREFIX = "d7y_s."
TOKEN_PREFIX = "d7y_pat_"
ROLES = {
    "root": "everything: read and write every resource, manage users and tokens",
    "guest": "read only: GET on every resource except users' secrets",
}
#: Which API groups (the path element after /api/v1/) each token scope opens.
SCOPE_GROUPS = {
    "cluster": {"clusters", "schedulers", "seed-peers"},
    "job": {"jobs"},
}
READ_METHODS = {"GET", "HEAD", "OPTIONS"}


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return "$".join(
        ["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), salt.hex(), digest.hex()]
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        candidate = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(digest) // 2,
        )
    except ValueError:
        return False
    return hmac.compare_digest(candidate.hex(), digest)


def load_or_create_key(path: Path) -> bytes:
    """The session signing key; made once (32 random bytes, readable by the owner only)."""
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    os.replace(tmp, path)
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_session(key: bytes, user_id: int, ttl: float, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + ttl)
    payload = _b64(json.dumps({"uid": user_id, "exp": expires}, separators=(",", ":")).encode())
    mac = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    return f"{SESSION_PREFIX}{payload}.{mac}"


class SessionInvalid(Exception):
    """A session token that is forged, malformed (401) or expired (``expired``: 401 too,
    with a message that says to sign in again)."""

    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def read_session(key: bytes, token: str, now: float | None = None) -> int:
    """The user ID a session token carries; SessionInvalid otherwise."""
    body = token[len(SESSION_PREFIX) :]
    payload, _, mac = body.partition(".")
    expected = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    if not mac or not hmac.compare_digest(mac, expected):
        raise SessionInvalid("the session token is not valid; sign in again")
    try:
        claims = json.loads(_unb64(payload))
        user_id, expires = int(claims["uid"]), float(claims["exp"])
    except (ValueError, KeyError, TypeError):
        raise SessionInvalid("the session token is not valid; sign in again") from None
    if (time.time() if now is None else now) >= expires:
        raise SessionInvalid("the session token has expired; sign in again", expired=True)
    return user_id


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a user by session, or a user through one of their tokens."""

    user_id: int
    user_name: str
    role: str
    token_id: int | None = None
    token_scopes: tuple[str, ...] = ()

    @property
    def actor(self) -> tuple[str, str]:
        """(actor_type, actor_name) for the audit log."""
        if self.token_id is not None:
            return "token", f"{self.user_name}/token-{self.token_id}"
        return "user", self.user_name

    def may(self, method: str, group: str) -> str | None:
        """None when allowed, else why not (for a 403)."""
        if self.token_id is not None:
            opened = set().union(*(SCOPE_GROUPS.get(s, set()) for s in self.token_scopes))
            if group not in opened:
                needed = [s for s, groups in SCOPE_GROUPS.items() if group in groups]
                need = f"a token with scope {needed[0]!r}" if needed else "a signed-in session"
                return (
                    f"this token's scopes {list(self.token_scopes)} do not cover {group}; "
                    f"use {need}"
                )
        if method in READ_METHODS:
            return None
        if self.role == "root":
            return None
        return f"role {self.role!r} may only read (GET); {method} needs role 'root'"
