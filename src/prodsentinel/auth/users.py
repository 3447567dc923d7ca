"""People: users, their project memberships, sign-in and sign-out (SPEC §15).

Rules kept here rather than in controllers or the CLI: an email is compared lower-cased; a second
create for the same email adds or changes that project's membership; a wrong email and a wrong
password fail the same way (same message, same argon2 cost); disabling a user or removing a
membership ends the affected sessions at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService

from prodsentinel.auth.login_limits import LoginLimiter
from prodsentinel.auth.models import Project, User
from prodsentinel.auth.passwords import MIN_PASSWORD_LENGTH, hash_password, verify_nothing, verify_password
from prodsentinel.auth.repositories import ProjectRepository
from prodsentinel.auth.scopes import ROLES, Principal
from prodsentinel.auth.services import ProjectService
from prodsentinel.auth.user_repositories import MembershipRepository, UserRepository, UserSessionRepository
from prodsentinel.auth.user_schemas import MembershipOut, ProjectUserIn, ProjectUserOut, UserOut
from prodsentinel.lib.errors import NotFoundError, UnauthorizedError, ValidationError
from prodsentinel.lib.time import utcnow

__all__ = ("LOGIN_FAILED", "SignIn", "UserService", "normalize_email")

#: The one answer to a failed login, whatever failed (SPEC §15).
LOGIN_FAILED = "Invalid email or password."
_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+")


def normalize_email(raw: str) -> str:
    email = raw.strip().lower()
    if not _EMAIL.fullmatch(email) or len(email) > 254:
        raise ValidationError("email: expected an address like ops@example.com.")
    return email


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValidationError(f"role: expected one of {', '.join(ROLES)}.")
    return role


def _check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(f"password: at least {MIN_PASSWORD_LENGTH} characters.")
    return password


@dataclass(frozen=True, slots=True)
class SignIn:
    """A session just opened: what the login answer and its token carry."""

    session_id: UUID
    user_id: UUID
    email: str
    project: str
    role: str
    expires_in: int


class UserService(SQLAlchemyAsyncRepositoryService[User]):
    repository_type = UserRepository
    repository: UserRepository

    @property
    def _memberships(self) -> MembershipRepository:
        return MembershipRepository(session=self.repository.session)

    @property
    def _sessions(self) -> UserSessionRepository:
        return UserSessionRepository(session=self.repository.session)

    async def email_exists(self, email: str) -> bool:
        return await self.repository.by_email(normalize_email(email)) is not None

    async def put_user(self, *, email: str, role: str, project: Project, password: str | None) -> User:
        """Create the user (a password is required then) or update it; add or change its membership."""
        email, role = normalize_email(email), _check_role(role)
        user = await self.repository.by_email(email)
        if user is None:
            if password is None:
                raise ValidationError(f"password: required to create the user {email!r}.")
            user = await self.repository.add(
                User(email=email, password_hash=hash_password(_check_password(password)))
            )
        elif password is not None:
            user.password_hash = hash_password(_check_password(password))
            user = await self.repository.update(user)
        await self._memberships.put_role(user.id, project.id, role)
        return user

    async def create_in_project(
        self, *, email: str, role: str, project: str, password: str | None
    ) -> UserOut:
        """The CLI's way in: ``project`` by name, created when needed (as ``keys create`` does)."""
        owner = await ProjectService(session=self.repository.session).get_or_create(project)
        user = await self.put_user(email=email, role=role, project=owner, password=password)
        [out] = await self.list_users([user.id])
        return out

    async def list_users(self, user_ids: list[UUID] | None = None) -> list[UserOut]:
        users = (
            await self.repository.list(User.id.in_(user_ids))
            if user_ids is not None
            else await self.repository.list()
        )
        users.sort(key=lambda user: user.email)
        memberships: dict[UUID, list[MembershipOut]] = {}
        for user_id, project, role, _ in await self.repository.memberships([user.id for user in users]):
            memberships.setdefault(user_id, []).append(MembershipOut(project=project, role=role))
        return [
            UserOut(
                id=user.id,
                email=user.email,
                created_at=user.created_at,
                disabled_at=user.disabled_at,
                memberships=memberships.get(user.id, []),
            )
            for user in users
        ]

    async def disable(self, email: str) -> UserOut:
        """Disable the user everywhere and end all of its sessions (idempotent)."""
        user = await self.repository.by_email(normalize_email(email))
        if user is None:
            raise NotFoundError("User not found.")
        if user.disabled_at is None:
            user.disabled_at = utcnow()
            user = await self.repository.update(user)
        await self._sessions.revoke(user_id=user.id)
        [out] = await self.list_users([user.id])
        return out

    # --- within one project (the HTTP API of an admin) ---

    async def project_users(self, project_id: UUID) -> list[ProjectUserOut]:
        return [_project_user(user, role) for user, role in await self.repository.in_project(project_id)]

    async def put_project_user(self, caller: Principal, data: ProjectUserIn) -> ProjectUserOut:
        project = await ProjectRepository(session=self.repository.session).get(caller.project_id)
        user = await self.put_user(email=data.email, role=data.role, project=project, password=data.password)
        return _project_user(user, data.role)

    async def remove_from_project(self, caller: Principal, user_id: UUID) -> None:
        """Remove the membership (404 when the user is not in the caller's project); its sessions end."""
        membership = await self._memberships.get_one_or_none(user_id=user_id, project_id=caller.project_id)
        if membership is None:
            raise NotFoundError("User not found.")
        await self._memberships.delete(membership.id)
        await self._sessions.revoke(user_id=user_id, project_id=caller.project_id)

    # --- sessions ---

    async def sign_in(
        self,
        *,
        email: str,
        password: str,
        project: str | None,
        lifetime: timedelta,
        limiter: LoginLimiter | None = None,
        address: str = "",
    ) -> SignIn:
        """Check the password and open a session in ``project`` (default: the first membership).

        With a ``limiter``, a limited email or address is refused first (429) and a failure counts.
        """
        if limiter is None:
            return await self._sign_in(email=email, password=password, project=project, lifetime=lifetime)
        await limiter.check(email, address)
        try:
            signed_in = await self._sign_in(
                email=email, password=password, project=project, lifetime=lifetime
            )
        except UnauthorizedError:
            await limiter.failed(email, address)
            raise
        await limiter.succeeded(email, address)
        return signed_in

    async def _sign_in(
        self, *, email: str, password: str, project: str | None, lifetime: timedelta
    ) -> SignIn:
        try:
            email = normalize_email(email)
        except ValidationError:
            verify_nothing(password)
            raise UnauthorizedError(LOGIN_FAILED) from None
        user = await self.repository.by_email(email)
        if user is None:
            verify_nothing(password)
            raise UnauthorizedError(LOGIN_FAILED)
        if not verify_password(user.password_hash, password) or user.disabled_at is not None:
            raise UnauthorizedError(LOGIN_FAILED)
        memberships = await self.repository.memberships([user.id])
        chosen = [row for row in memberships if project is None or row[1] == project.strip()]
        if not chosen:
            # The password was right, so naming the problem leaks nothing to a stranger.
            raise UnauthorizedError(
                "This user has no role in that project." if project else "This user has no project."
            )
        _, project_name, role, project_id = chosen[0]
        session = await self._sessions.open(user.id, project_id, utcnow() + lifetime)
        return SignIn(
            session_id=session.id,
            user_id=user.id,
            email=user.email,
            project=project_name,
            role=role,
            expires_in=int(lifetime.total_seconds()),
        )

    async def sign_out(self, session_id: UUID) -> None:
        await self._sessions.revoke(session_id=session_id)


def _project_user(user: User, role: str) -> ProjectUserOut:
    return ProjectUserOut(
        id=user.id, email=user.email, role=role, created_at=user.created_at, disabled_at=user.disabled_at
    )
