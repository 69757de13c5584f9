"""Input items of a stored response (crosslogic/responses/input_items.py): shape, ids, order, cursors."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from crosslogic.errors import InvalidRequestError
from crosslogic.responses.input_items import input_items, listing
from crosslogic.responses.store import StoredResponse

HEX = "ab" * 16


def _stored(value: Any) -> StoredResponse:
    return StoredResponse(
        id=f"resp_{HEX}", tenant_id=uuid.uuid4(), key_id=None, request_id=f"req_{HEX}", model="m",
        status="completed", request={"model": "m", "input": value}, input_items=[], response={},
    )


def test_a_string_input_is_one_user_message_with_typed_text() -> None:
    [item] = input_items(_stored("hello"))
    assert item == {"id": f"msg_{HEX}00000000", "type": "message", "role": "user", "status": "completed",
                    "content": [{"type": "input_text", "text": "hello"}]}


def test_items_keep_their_own_ids_and_shapes() -> None:
    value = [
        {"role": "system", "content": "rules"},
        {"type": "message", "role": "assistant", "content": "earlier answer"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42", "id": "fco_1"},
        {"role": "user", "content": [{"type": "input_text", "text": "and?"}]},
    ]
    items = input_items(_stored(value))
    assert [i["id"] for i in items] == [f"msg_{HEX}00000000", f"msg_{HEX}00000001", "fco_1", f"msg_{HEX}00000003"]
    assert items[1]["content"] == [{"type": "output_text", "text": "earlier answer"}]
    assert "status" not in items[2] and items[2]["output"] == "42"
    assert items[3]["content"] == [{"type": "input_text", "text": "and?"}]
    assert input_items(_stored(value)) == items  # the same ids every time: cursors stay valid


def test_pages_in_either_order_with_cursors() -> None:
    stored = _stored([{"role": "user", "content": str(n)} for n in range(5)])
    ids = [i["id"] for i in input_items(stored)]
    first = listing(stored, limit=2)
    assert [i["id"] for i in first["data"]] == ids[::-1][:2] and first["has_more"]
    assert (first["first_id"], first["last_id"]) == (ids[4], ids[3])
    rest = listing(stored, limit=10, after=first["last_id"])
    assert [i["id"] for i in rest["data"]] == ids[::-1][2:] and not rest["has_more"]
    asc = listing(stored, order="asc", after=ids[0], before=ids[3])
    assert [i["id"] for i in asc["data"]] == ids[1:3]
    assert listing(_stored([]), limit=5) == {"object": "list", "data": [], "has_more": False,
                                             "first_id": None, "last_id": None}


@pytest.mark.parametrize(("kwargs", "param"), [({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
                                               ({"after": "msg_x"}, "after"), ({"before": "nope"}, "before")])
def test_bad_paging_is_a_400_naming_the_parameter(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        listing(_stored("hi"), **kwargs)
    assert refused.value.param == param


def test_a_long_cursor_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidRequestError) as refused:
        listing(_stored("hi"), after="x" * 10_000)
    assert refused.value.param == "after" and len(str(refused.value)) < 200
