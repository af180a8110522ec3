"""The in-memory book of stream tokens: once only, for its own call, refused again after use."""

from __future__ import annotations

from announcer.store.calls import StreamGrant
from announcer.telephony.tokens import TokenBook

CA = "CA" + "1" * 32


def test_a_token_is_taken_once_and_remembered() -> None:
    book = TokenBook()
    grant = StreamGrant(call_id=1, call_sid=CA, text="Hi", kind="greeting")
    book.issued("tok", grant)
    assert not book.taken_here("tok")
    assert book.take("tok", CA) == grant
    assert book.take("tok", CA) is None
    assert book.taken_here("tok")
    assert book.take("other", CA) is None and not book.taken_here("other")


def test_a_token_for_another_call_is_refused() -> None:
    book = TokenBook()
    book.issued("tok", StreamGrant(call_id=1, call_sid=CA, text="Hi", kind="greeting"))
    assert book.take("tok", "CA" + "2" * 32) is None
    assert book.taken_here("tok")  # burnt, like the database does
