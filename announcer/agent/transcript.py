"""One conversation's transcript, as turns in order: the agent's responses (corrected when the agent
revises a cut response) and the caller's words as the agent understood them. Written as it happens,
through the store's journal; nothing here waits for the database."""

from __future__ import annotations

from announcer.store import transcripts
from announcer.store.journal import Journal
from announcer.store.models import utcnow

MAX_TURN_CHARS = 4000  # one turn's text; a runaway response must not bloat the database


class Transcript:
    def __init__(self, journal: Journal, call_id: int) -> None:
        self._journal = journal
        self._call_id = call_id
        self._seq = 0
        self._agent_turns: list[tuple[int, str]] = []  # (seq, text) of the agent's turns, newest last

    def agent_said(self, text: str) -> int:
        seq = self._add("agent", text)
        self._agent_turns.append((seq, text[:MAX_TURN_CHARS]))
        del self._agent_turns[:-8]  # a correction concerns one of the last few responses
        return seq

    def user_said(self, text: str) -> int:
        return self._add("user", text)

    def agent_corrected(self, original: str, corrected: str) -> None:
        """The agent revised a response the caller cut short: keep both texts on that turn."""
        original = original[:MAX_TURN_CHARS]
        if not self._agent_turns:
            return
        matching = [seq for seq, text in self._agent_turns if text == original]
        seq = matching[-1] if matching else self._agent_turns[-1][0]
        transcripts.change_turn(
            self._journal, self._call_id, seq, text=corrected[:MAX_TURN_CHARS], original_text=original
        )

    def agent_interrupted(self, seq: int, *, played_ms: int, sent_ms: int) -> None:
        transcripts.change_turn(
            self._journal, self._call_id, seq, interrupted=True, played_ms=played_ms, sent_ms=sent_ms
        )

    def _add(self, role: str, text: str) -> int:
        seq = self._seq
        self._seq += 1
        transcripts.add_turn(self._journal, self._call_id, seq, role, text[:MAX_TURN_CHARS], utcnow())
        return seq
