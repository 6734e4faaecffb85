"""Canary: the known deviations of nx-27017 (shared/mongo.md) still exist.

The master's code guards against each one. When a test here fails, the server has been fixed:
check the guard, relax it if it is now needless, and update mongo.md. Against a real MongoDB
(``AICDN_TEST_MONGO_URI``) the deviations do not exist, so these tests are skipped there.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator

import pytest
from bson import ObjectId
from pymongo import MongoClient, ReturnDocument
from pymongo.database import Database

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("AICDN_TEST_MONGO_URI")), reason="deviations of nx-27017 only"
)


@pytest.fixture
def db(mongo_uri: str) -> Iterator[Database[dict[str, object]]]:
    client: MongoClient[dict[str, object]] = MongoClient(mongo_uri)
    client.drop_database("aicdn_canary")
    yield client["aicdn_canary"]
    client.drop_database("aicdn_canary")
    client.close()


def test_or_beside_other_keys_is_misparenthesised_in_writes(
    db: Database[dict[str, object]],
) -> None:
    leases = db["leases"]
    leases.insert_many(
        [
            {"_id": "m", "holder": "A", "expires_at": time.time() + 100},
            {"_id": "n", "holder": "B", "expires_at": 0},
        ]
    )
    wrong = {"_id": "m", "$or": [{"expires_at": {"$lt": time.time()}}, {"holder": "B"}]}
    # Correct answer: no match ("m" is live and held by A). nx-27017 reads it as
    # _id = m AND expired OR holder = B, and updates "n".
    assert leases.update_one(wrong, {"$set": {"touched": True}}).matched_count == 1
    assert leases.find_one({"_id": "n"}) == {
        "_id": "n",
        "holder": "B",
        "expires_at": 0,
        "touched": True,
    }
    # The guard (repos.base.all_of) gives the right answer.
    guarded = {"$and": [{"_id": "m"}, {"$or": wrong["$or"]}]}
    assert leases.update_one(guarded, {"$set": {"touched": True}}).matched_count == 0


def test_find_one_and_update_swallows_duplicate_key(db: Database[dict[str, object]]) -> None:
    items = db["items"]
    items.create_index("name", unique=True)
    items.insert_many([{"_id": 1, "name": "x"}, {"_id": 2, "name": "y"}])
    answer = items.find_one_and_update(
        {"_id": 2}, {"$set": {"name": "x"}}, return_document=ReturnDocument.AFTER
    )
    assert answer is None  # MongoDB raises DuplicateKeyError
    assert items.find_one({"_id": 2}) == {"_id": 2, "name": "y"}


def test_push_of_subdocuments_corrupts_the_array(db: Database[dict[str, object]]) -> None:
    events = db["events"]
    events.insert_one({"_id": 1, "log": []})
    events.update_one({"_id": 1}, {"$push": {"log": {"k": 1}}})
    doc = events.find_one({"_id": 1})
    assert doc is not None and doc["log"] == ['{"k":1}']  # a string, not {"k": 1}


def test_set_of_a_datetime_stores_a_string(db: Database[dict[str, object]]) -> None:
    stamps = db["stamps"]
    stamps.insert_one({"_id": 1})
    stamps.update_one({"_id": 1}, {"$set": {"at": datetime.datetime(2020, 1, 1)}})
    doc = stamps.find_one({"_id": 1})
    assert doc is not None and isinstance(doc["at"], str)


def test_equality_on_an_objectid_field_matches_nothing(db: Database[dict[str, object]]) -> None:
    refs = db["refs"]
    oid = ObjectId()
    refs.insert_one({"_id": 1, "ref": oid})
    assert refs.count_documents({"ref": oid}) == 0  # MongoDB: 1


def test_the_safe_subset_the_master_relies_on(db: Database[dict[str, object]]) -> None:
    """Not a deviation: the operations the repositories use behave like MongoDB."""
    col = db["safe"]
    col.insert_one({"_id": "k", "seq": 1, "tags": ["a", "b"]})
    assert col.update_one({"_id": "k", "seq": 1}, {"$set": {"seq": 2}}).modified_count == 1
    assert col.update_one({"_id": "k", "seq": 1}, {"$set": {"seq": 3}}).modified_count == 0
    counter = col.find_one_and_update(
        {"_id": "c"}, {"$inc": {"n": 1}}, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert counter == {"_id": "c", "n": 1}
    assert col.count_documents({"tags": {"$all": ["a", "b"]}}) == 1
    assert col.count_documents({"_id": {"$nin": ["k"]}}) == 1
