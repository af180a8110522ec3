"""The registry of media sessions live in this process (telephony/live.py)."""

from __future__ import annotations

from announcer.telephony.callflow import MachineVerdict
from announcer.telephony.live import LiveCalls


class Session:
    def __init__(self) -> None:
        self.verdicts: list[MachineVerdict] = []

    def verdict(self, verdict: MachineVerdict) -> None:
        self.verdicts.append(verdict)


def test_a_session_that_leaves_is_gone_though_its_bound_method_is_a_new_object() -> None:
    live = LiveCalls()
    first, second = Session(), Session()
    live.join("CA1", first.verdict)
    live.join("CA2", second.verdict)
    assert len(live) == 2
    live.leave("CA1", first.verdict)  # a new bound-method object, as media.py passes it
    assert len(live) == 1


def test_a_later_session_on_the_same_call_is_not_removed_by_the_earlier_one() -> None:
    live = LiveCalls()
    earlier, later = Session(), Session()
    live.join("CA1", earlier.verdict)
    live.join("CA1", later.verdict)  # a second stream on the call
    live.leave("CA1", earlier.verdict)
    assert len(live) == 1
