"""``revoked_tokens``: JWT ids refused until the token would have expired anyway."""

from __future__ import annotations

from master_api.repos.base import BaseRepo, IndexSpec, db_call

__all__ = ["RevokedTokensRepo"]


class RevokedTokensRepo(BaseRepo):
    collection_name = "revoked_tokens"
    indexes = (IndexSpec(("expires_at", 1)),)

    @db_call()
    def revoke(self, jti: str, expires_at: float, user: str, kind: str, now: float) -> None:
        """Refuse token ``jti`` from now on (idempotent)."""
        self.collection.update_one(
            {"_id": jti},
            {"$set": {"expires_at": expires_at, "user": user, "kind": kind, "revoked_at": now}},
            upsert=True,
        )

    @db_call()
    def is_revoked(self, jti: str) -> bool:
        return self.collection.find_one({"_id": jti}, {"_id": 1}) is not None

    @db_call()
    def purge_expired(self, now: float) -> int:
        """Forget revocations of tokens that have expired (they are refused as expired)."""
        return self.collection.delete_many({"expires_at": {"$lt": now}}).deleted_count
