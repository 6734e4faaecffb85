"""``users``: operators of the master. ``_id`` is the user name."""

from __future__ import annotations

from typing import Any, cast

from master_api.models import Role, User
from master_api.repos.base import BaseRepo, Document, db_call

__all__ = ["UsersRepo"]


class UsersRepo(BaseRepo):
    collection_name = "users"

    @db_call(conflict="a user with this name already exists")
    def create(self, user: User) -> None:
        """Insert ``user``; 409 when the name is taken."""
        self.collection.insert_one(
            {
                "_id": user.name,
                "role": user.role,
                "password_hash": user.password_hash,
                "created_at": user.created_at,
                "updated_at": user.updated_at,
            }
        )

    @db_call()
    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        doc = self.collection.find_one({"_id": name})
        return _user(doc) if doc else None

    @db_call()
    def find(self) -> list[User]:
        """All users by name."""
        return [_user(doc) for doc in self.collection.find({}).sort("_id", 1)]

    @db_call()
    def update(self, name: str, now: float, **changes: Any) -> bool:
        """Set ``role`` and/or ``password_hash``; False when there is no such user."""
        result = self.collection.update_one({"_id": name}, {"$set": {**changes, "updated_at": now}})
        return result.matched_count == 1

    @db_call()
    def delete(self, name: str) -> bool:
        """Remove the user; False when there was none."""
        return self.collection.delete_one({"_id": name}).deleted_count == 1

    @db_call()
    def count_role(self, role: Role) -> int:
        return self.collection.count_documents({"role": role})


def _user(doc: Document) -> User:
    return User(
        name=str(doc["_id"]),
        role=cast(Role, doc["role"]),
        password_hash=str(doc["password_hash"]),
        created_at=float(doc["created_at"]),
        updated_at=float(doc.get("updated_at") or doc["created_at"]),
    )
