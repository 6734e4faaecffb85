"""What every repository shares: its collection, its indexes, and driver-error translation.

Driver errors are mapped here and nowhere else (STYLE E3):

* ``DuplicateKeyError`` (11000) -> :class:`~master_api.errors.Conflict` (409) with the
  repository's message for that collection;
* ``ConnectionFailure`` (server selection timed out, connection lost, network timeout) ->
  :class:`~master_api.errors.StoreUnavailable` (503).

Anything else (a malformed query is a bug) propagates and becomes a logged 500.

Queries stay inside the subset that is correct on MongoDB and on nx-27017 (``shared/mongo.md``):
``$or`` only inside ``$and`` (:func:`all_of`), no ``$push`` of documents, epoch numbers for
timestamps that are compared, string references.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, ParamSpec, TypeVar

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError, ServerSelectionTimeoutError

from master_api.errors import Conflict, StoreUnavailable

__all__ = ["BaseRepo", "Document", "IndexSpec", "all_of", "db_call"]

Document = dict[str, Any]
_P = ParamSpec("_P")
_R = TypeVar("_R")


class IndexSpec:
    """One index: ``keys`` as (field, direction) pairs; ``unique``; optional TTL seconds."""

    def __init__(
        self, *keys: tuple[str, int], unique: bool = False, expire_after: int | None = None
    ) -> None:
        self.keys = list(keys)
        self.unique = unique
        self.expire_after = expire_after


def all_of(*clauses: Document) -> Document:
    """``{"$and": [...]}`` of the non-empty clauses (``{}`` when none).

    Always use this to combine an ``$or`` with other conditions: nx-27017 mis-parenthesises an
    ``$or`` that sits beside other top-level keys in writes (``shared/mongo.md`` rule 1).
    """
    parts = [clause for clause in clauses if clause]
    if not parts:
        return {}
    if len(parts) == 1:
        return parts[0]
    return {"$and": parts}


def db_call(
    conflict: str = "a record with this key already exists",
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a repository method: translate driver errors into API errors (see module doc).

    ``conflict`` is the message of the 409 a duplicate key gives.
    """

    def decorate(method: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(method)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return method(*args, **kwargs)
            except DuplicateKeyError:
                raise Conflict(conflict) from None
            except ServerSelectionTimeoutError:
                raise StoreUnavailable(
                    "the database is unavailable (no server answered in time); retry later"
                ) from None
            except ConnectionFailure:
                raise StoreUnavailable(
                    "the database is unavailable (connection lost); retry later"
                ) from None

        return wrapper

    return decorate


class BaseRepo:
    """A repository: the only code that touches its collection.

    Subclasses set ``collection_name`` and ``indexes``; :meth:`ensure_indexes` creates them at
    start-up (idempotent).
    """

    collection_name: ClassVar[str]
    indexes: ClassVar[Sequence[IndexSpec]] = ()

    def __init__(self, db: Database[Document]) -> None:
        self.collection: Collection[Document] = db[self.collection_name]

    @db_call()
    def ensure_indexes(self) -> None:
        """Create this collection's indexes (no-op for those that exist)."""
        for spec in self.indexes:
            options: dict[str, Any] = {"unique": spec.unique}
            if spec.expire_after is not None:
                options["expireAfterSeconds"] = spec.expire_after
            self.collection.create_index(spec.keys, **options)
