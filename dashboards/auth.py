"""Who is asking: users from a file with password hashes, or a trusted single-sign-on proxy.

A principal is either an admin (sees every tenant) or a tenant-viewer bound to a set of tenants.
Everything the dashboards send is filtered on the server by the principal's tenants (see
`Principal.allowed`), so what a viewer's browser asks for never widens what it receives.

Bad logins are slowed down per (user, address): after `free` failures each further attempt has to
wait an exponentially growing delay, during which attempts are refused without checking the
password (a guessing script gets nothing from sending faster).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import threading
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ROLES = ("admin", "tenant-viewer")
_HASHER = PasswordHasher()
# Verified when the user does not exist, so an unknown name takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("gpuledger: not a real password")


class AuthConfigError(ValueError):
    """A users file or auth setting that cannot be used; the message names the file and entry."""


@dataclass(frozen=True)
class Principal:
    """The logged-in user; `tenants` None means every tenant (admin)."""

    name: str
    role: str
    tenants: frozenset[str] | None

    @property
    def is_admin(self) -> bool:
        return self.tenants is None

    def allowed(self, requested: Iterable[str] = ()) -> frozenset[str] | None:
        """Tenants a query may touch: the requested ones the principal holds (all of its own when the
        request names none or only foreign ones); None = no restriction (admin, nothing requested)."""
        req = frozenset(t for t in requested if t)
        if self.tenants is None:
            return req or None
        kept = req & self.tenants
        return kept or self.tenants

    def as_session(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "tenants": sorted(self.tenants or ())}


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    role: str
    tenants: frozenset[str]

    def principal(self) -> Principal:
        return Principal(self.name, self.role, None if self.role == "admin" else self.tenants)


def hash_password(password: str) -> str:
    """An argon2id hash (argon2-cffi's defaults, RFC 9106 low-memory profile)."""
    return _HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """argon2 hashes through argon2-cffi; bcrypt hashes ($2a$/$2b$/$2y$) through bcrypt when installed."""
    if stored.startswith("$2"):
        try:
            import bcrypt
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise AuthConfigError("a bcrypt password hash needs the bcrypt package installed") from exc
        return bool(bcrypt.checkpw(password.encode(), stored.encode()))
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def parse_users(data: Any, source: str) -> dict[str, User]:
    """`{"users": [{name, password_hash, role, tenants}]}` -> users by name, every entry checked."""
    if not isinstance(data, dict) or not isinstance(data.get("users"), list):
        raise AuthConfigError(f"users file {source}: expected a list 'users' ([[users]] tables in TOML)")
    users: dict[str, User] = {}
    for i, e in enumerate(data["users"]):
        where = f"users file {source}, users[{i}]"
        if not isinstance(e, dict):
            raise AuthConfigError(f"{where} = {e!r}: expected a table")
        unknown = set(e) - {"name", "password_hash", "role", "tenants"}
        if unknown:
            raise AuthConfigError(
                f"{where}: unknown keys {sorted(unknown)}; expected name, password_hash, role, tenants"
            )
        name, pw, role = e.get("name"), e.get("password_hash"), e.get("role")
        if not isinstance(name, str) or not name.strip():
            raise AuthConfigError(f"{where}: expected a non-empty 'name'")
        where = f"{where} ({name!r})"
        if name in users:
            raise AuthConfigError(f"{where}: a second user with this name")
        if role not in ROLES:
            raise AuthConfigError(f"{where}: role = {role!r}: expected one of {', '.join(ROLES)}")
        if not isinstance(pw, str) or not (pw.startswith("$argon2") or pw.startswith("$2")):
            raise AuthConfigError(
                f"{where}: password_hash: expected an argon2 ($argon2id$...) or bcrypt ($2b$...) hash "
                f"(python -m dashboards.auth hash makes one)"
            )
        tenants = e.get("tenants", [])
        if not isinstance(tenants, list) or not all(isinstance(t, str) and t for t in tenants):
            raise AuthConfigError(f"{where}: tenants = {tenants!r}: expected a list of tenant names")
        if role == "tenant-viewer" and not tenants:
            raise AuthConfigError(f"{where}: a tenant-viewer needs at least one tenant in 'tenants'")
        users[name] = User(name, pw, role, frozenset(tenants))
    return users


def load_users(path: str | os.PathLike[str]) -> dict[str, User]:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError as exc:
        raise AuthConfigError(f"dashboard.users_file = {str(p)!r}: the file does not exist") from exc
    except OSError as exc:
        raise AuthConfigError(f"dashboard.users_file = {str(p)!r}: cannot be read ({exc.strerror})") from exc
    try:
        data = json.loads(raw) if p.suffix.lower() == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise AuthConfigError(f"users file {p}: not valid {kind}: {exc}") from exc
    return parse_users(data, str(p))


class UserStore:
    """The users file, re-read when it changes, so users can be added without a restart."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users = load_users(self.path)  # a bad file fails the start, with the reason
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def users(self) -> dict[str, User]:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            with self._lock:
                # A half-edited file keeps the last good users: it must not lock everyone out.
                with contextlib.suppress(AuthConfigError):
                    self._users = load_users(self.path)
                self._stamp = stamp
        return self._users

    def authenticate(self, name: str, password: str) -> Principal | None:
        user = self.users().get(name)
        if user is None:
            verify_password(_DUMMY_HASH, password)
            return None
        return user.principal() if verify_password(user.password_hash, password) else None


class SessionStateError(RuntimeError):
    """The session generations cannot be read: sessions are refused (fail closed)."""


class SessionGenerations:
    """Per-user session generation, kept on the server: logout bumps it, and a session cookie made
    under an older generation is refused on its next request (every one of the user's sessions
    ends: a cookie captured before the logout is worth nothing after it).

    Stored in a small JSON file (``{"user": generation}``) replaced atomically under an flock, so
    every dashboard process over the same file (restarts, replicas on a shared volume) agrees;
    a read is one ``stat`` unless the file changed. Without a path: this process only.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._gens: dict[str, int] = {}
        self._seen: tuple[int, int, int] | None = None

    def _load(self, force: bool = False) -> dict[str, int]:
        if self.path is None:
            return self._gens
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._gens, self._seen = {}, None
            return self._gens
        except OSError as exc:
            raise SessionStateError(f"session state {self.path}: {exc.strerror}") from exc
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if force or key != self._seen:
            try:
                data = json.loads(self.path.read_bytes())
            except (OSError, ValueError) as exc:
                raise SessionStateError(f"session state {self.path}: unreadable ({exc})") from exc
            if not isinstance(data, dict):
                raise SessionStateError(f"session state {self.path}: expected a JSON object")
            self._gens = {k: v for k, v in data.items() if isinstance(v, int)}
            self._seen = key
        return self._gens

    def current(self, user: str) -> int:
        with self._lock:
            return self._load().get(user, 0)

    def bump(self, user: str) -> int:
        """End every session of `user`; returns the new generation."""
        with self._lock:
            if self.path is None:
                self._gens[user] = self._gens.get(user, 0) + 1
                return self._gens[user]
            import fcntl

            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                gens = dict(self._load(force=True))
                gens[user] = gens.get(user, 0) + 1
                tmp = self.path.with_name(self.path.name + ".tmp")
                with open(tmp, "w") as fh:
                    json.dump(gens, fh, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
                self._load(force=True)
                return gens[user]


class LoginThrottle:
    """Exponential delay per (user, address) after `free` failed logins; bounded memory."""

    def __init__(
        self,
        free: int = 3,
        base_s: float = 1.0,
        max_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self.free, self.base_s, self.max_s = free, base_s, max(max_s, base_s)
        self.clock = clock
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._fails: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()

    def delay(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return min(self.max_s, self.base_s * 2 ** (failures - self.free))

    def wait_s(self, user: str, addr: str) -> float:
        """Seconds until this user may try again from this address (0: now)."""
        with self._lock:
            entry = self._fails.get((user, addr))
            if entry is None:
                return 0.0
            n, last = entry
            return max(0.0, last + self.delay(n) - self.clock())

    def failed(self, user: str, addr: str) -> None:
        with self._lock:
            key = (user, addr)
            n, _ = self._fails.pop(key, (0, 0.0))
            self._fails[key] = (n + 1, self.clock())
            while len(self._fails) > self.max_entries:
                self._fails.popitem(last=False)

    def succeeded(self, user: str, addr: str) -> None:
        with self._lock:
            self._fails.pop((user, addr), None)


class TrustedHeaders:
    """Single sign-on through a reverse proxy: user and groups from headers, only from the proxy."""

    def __init__(
        self,
        user_header: str,
        groups_header: str,
        proxies: Iterable[str],
        admin_group: str,
        tenant_prefix: str,
    ) -> None:
        self.user_header, self.groups_header = user_header, groups_header
        self.networks = [ipaddress.ip_network(p, strict=False) for p in proxies]
        self.admin_group, self.tenant_prefix = admin_group, tenant_prefix

    def trusted(self, addr: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(addr or "")
        except ValueError:
            return False
        return any(ip in n for n in self.networks)

    def principal(self, addr: str | None, headers: Mapping[str, str]) -> tuple[Principal | None, str]:
        """(principal, "") or (None, why not)."""
        if not self.trusted(addr):
            return None, f"requests must come through the login proxy ({addr} is not a trusted proxy)"
        user = (headers.get(self.user_header) or "").strip()
        if not user:
            return None, f"the proxy sent no {self.user_header} header"
        groups = {g.strip() for g in (headers.get(self.groups_header) or "").replace(";", ",").split(",")}
        groups.discard("")
        if self.admin_group in groups:
            return Principal(user, "admin", None), ""
        tenants = frozenset(g[len(self.tenant_prefix) :] for g in groups if g.startswith(self.tenant_prefix))
        tenants -= {""}
        if not tenants:
            return (
                None,
                f"user {user!r} is in no dashboard group ({self.admin_group} or {self.tenant_prefix}*)",
            )
        return Principal(user, "tenant-viewer", tenants), ""


def _main(argv: list[str] | None = None) -> int:
    """`python -m dashboards.auth hash`: read a password from the terminal (or stdin), print its hash."""
    import getpass
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["hash"]:
        print("usage: python -m dashboards.auth hash   (prints an argon2id hash for a users file)")
        return 2
    pw = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not pw:
        print("empty password refused", file=sys.stderr)
        return 1
    print(hash_password(pw))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
