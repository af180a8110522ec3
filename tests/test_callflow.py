"""The call flow (telephony/callflow.py) without a socket: every phase x every event in one table, the
pairs that must do nothing included; then the paths the table's states do not show (menus, the script
arriving late, the agent's ways to end, the greeting line, who answered)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from announcer.store.models import CallKind, CallOutcome
from announcer.telephony.callflow import (
    BYE_GRACE_S,
    WINDOW_S,
    Action,
    AgentConnected,
    AgentEnded,
    AwaitScript,
    AwaitVerdict,
    CalleeHeard,
    CallScript,
    CallState,
    CancelDeadline,
    Choice,
    Clear,
    CloseAgent,
    CloseSocket,
    DeadlinePassed,
    Event,
    ForwardMark,
    HandOver,
    HangUp,
    Hearing,
    KeyPressed,
    MachineVerdict,
    MarkEchoed,
    Phase,
    Played,
    Record,
    RedirectToSay,
    ReportOutcome,
    SaidByTwilio,
    ScriptLoaded,
    SendMark,
    Setup,
    SocketClosed,
    Speak,
    SpeechFailed,
    StartDeadline,
    StopSpeaking,
    StreamStarted,
    StreamStopped,
    TokenRefused,
    menu_for,
    step,
)
from announcer.telephony.handoff import After, AgentEnd, AgentOffer, EndKind

TEXT = "The message."
VOICEMAIL = "The voicemail."
PROMPT = "Press 1 to confirm."
KEY_OFFER = AgentOffer(After.KEY, key="0")
SCRIPT = CallScript(prompt=PROMPT, repeat_keys=frozenset({"2"}), window_s=8.0, agent=KEY_OFFER)
SETUP = Setup(
    call_id=7,
    kind=CallKind.ANNOUNCEMENT,
    text=TEXT,
    agent=True,
    script=True,
    apology="Sorry.",
    time_limit="Time is up.",
)
# An announcement that starts after hello, with machine detection and a voicemail text of its own
# (listen_s 3.0 and hold_s 35.0: Setup's defaults).
SETUP_LISTEN = replace(SETUP, listen=True, amd=True, voicemail=VOICEMAIL)
AGENT_SAID_BYE = AgentEnd(EndKind.AGENT_ENDED, "the agent ended the conversation", connected=True)
UNREACHABLE = AgentEnd(EndKind.FAILED, "agent unreachable", connected=False)


def run(call: CallState, *events: Event) -> CallState:
    for event in events:
        call, _ = step(call, event)
    return call


def actions_of(call: CallState, *events: Event) -> tuple[CallState, list[Action]]:
    """The state after `events`, and the actions of the last one."""
    actions: list[Action] = []
    for event in events:
        call, actions = step(call, event)
    return call, actions


# --- one state per phase, each reached through `step` itself ------------------------------------------

CONNECTING = CallState()
# The message, started over once with key 2: round 1, so `end:7.0` is an echo that our `clear` flushed.
SPEAKING = run(CONNECTING, StreamStarted(SETUP), ScriptLoaded(SCRIPT), KeyPressed("2"))
PROMPTING = run(SPEAKING, MarkEchoed("end:7.1"))
AWAITING_KEY = run(PROMPTING, MarkEchoed("prompt:7.1"))  # deadline 1 runs
WITH_AGENT = run(SPEAKING, KeyPressed("0"))  # the key's `clear`: round 2
SAYING_GOODBYE = run(WITH_AGENT, AgentEnded(AGENT_SAID_BYE))  # its mark sent, the grace (deadline 1) runs
ENDED = run(AWAITING_KEY, KeyPressed("1"))
LISTENING = run(CONNECTING, StreamStarted(SETUP_LISTEN), ScriptLoaded(SCRIPT))  # the backstop: deadline 1
HOLDING = run(LISTENING, CalleeHeard(Hearing.LONG_SPEECH, 2400))  # the verdict's wait: deadline 2
# A machine reported mid-message (its greeting began with a short "Hi"): the verdict's `clear` makes
# round 1, so `end:7.0` is the cut message's echo. The verdict is the call's: later ones do nothing.
LEAVING_VOICEMAIL = run(
    LISTENING, CalleeHeard(Hearing.HELLO_ENDED, 600), MachineVerdict("machine_end_beep", 4100)
)
STATES: dict[Phase, CallState] = {
    Phase.CONNECTING: CONNECTING,
    Phase.SPEAKING: SPEAKING,
    Phase.PROMPTING: PROMPTING,
    Phase.AWAITING_KEY: AWAITING_KEY,
    Phase.WITH_AGENT: WITH_AGENT,
    Phase.SAYING_GOODBYE: SAYING_GOODBYE,
    Phase.ENDED: ENDED,
    Phase.LISTENING_FOR_HELLO: LISTENING,
    Phase.HOLDING_FOR_AMD: HOLDING,
    Phase.LEAVING_VOICEMAIL: LEAVING_VOICEMAIL,
}

# --- one column per event (built from the state: a mark of its round, its deadline) ------------------

# Machine detection's verdicts, by column.
VERDICTS = {
    "verdict human": "human",
    "verdict unknown": "unknown",
    "verdict machine_start": "machine_start",
    "verdict machine_end_beep": "machine_end_beep",
    "verdict machine_end_silence": "machine_end_silence",
    "verdict fax": "fax",
}


def verdict_column(answered_by: str) -> Callable[[CallState], Event]:
    return lambda c: MachineVerdict(answered_by, 3200)


COLUMNS: dict[str, Callable[[CallState], Event]] = {
    "stream started": lambda c: StreamStarted(SETUP),
    "end mark": lambda c: MarkEchoed(f"end:7.{c.round}"),
    "prompt mark": lambda c: MarkEchoed(f"prompt:7.{c.round}"),
    "bye mark": lambda c: MarkEchoed(f"bye:7.{c.round}"),
    "mark after clear": lambda c: MarkEchoed(f"end:7.{c.round - 1}"),
    "agent mark": lambda c: MarkEchoed("agent:0.1.5"),
    "key 1": lambda c: KeyPressed("1"),
    "key 2": lambda c: KeyPressed("2"),
    "key 9": lambda c: KeyPressed("9"),
    "key 0 (agent)": lambda c: KeyPressed("0"),
    "key 5 (none)": lambda c: KeyPressed("5"),
    "script loaded": lambda c: ScriptLoaded(SCRIPT),
    "agent connected": lambda c: AgentConnected("conv1"),
    "agent ended": lambda c: AgentEnded(UNREACHABLE),
    "deadline": lambda c: DeadlinePassed(c.timer),
    "stale deadline": lambda c: DeadlinePassed(c.timer - 1),
    "stream stopped": lambda c: StreamStopped(),
    "socket closed": lambda c: SocketClosed("socket closed"),
    "speech failed": lambda c: SpeechFailed("tts down"),
    "said by twilio": lambda c: SaidByTwilio("tts down"),
    "token refused": lambda c: TokenRefused(),
    "hello ended": lambda c: CalleeHeard(Hearing.HELLO_ENDED, 600),
    "silence": lambda c: CalleeHeard(Hearing.SILENCE),
    "long speech": lambda c: CalleeHeard(Hearing.LONG_SPEECH, 2400),
    "speech started": lambda c: CalleeHeard(Hearing.SPEECH_STARTED),
    "tone": lambda c: CalleeHeard(Hearing.TONE, 100),
    **{column: verdict_column(answered_by) for column, answered_by in VERDICTS.items()},
    "progress mark": lambda c: MarkEchoed(f"played:1500:7.{c.round}"),
    "old progress mark": lambda c: MarkEchoed(f"played:1500:7.{c.round - 1}"),
    "vm mark": lambda c: MarkEchoed(f"vm:7.{c.round}"),
}

NOTHING = None  # the state stays as it was and nothing is done
Expected = tuple[Phase, list[Action]] | None

STOP, CANCEL, CLEAR = StopSpeaking(), CancelDeadline(), Clear()
HANG_UP: list[Action] = [HangUp(), CloseSocket("call ended")]
CONFIRMED = ReportOutcome(CallOutcome.CONFIRMED, "pressed 1 to confirm")
OPTED_OUT = ReportOutcome(CallOutcome.OPTED_OUT, "pressed 9: do not call this number again")
HUNG_UP_EARLY = ReportOutcome(CallOutcome.HUNG_UP_EARLY, "stream stopped before the message ended")
HUNG_UP_BEFORE = ReportOutcome(CallOutcome.HUNG_UP_EARLY, "stream stopped before the message started")
SAID = ReportOutcome(CallOutcome.SAID_BY_TWILIO, "tts down", "spoken by Twilio <Say>: tts down")
STOPPED = CloseSocket("stream stopped")
REUSED: list[Action] = [Record("stream_token_reused")]
REFUSED = CloseSocket("stream token already used", refused=True)
REPEAT = Record("repeat", {"digit": "2"})
HANDED: list[Action] = [Record("agent_handoff", {"after": "key"}), HandOver(KEY_OFFER, TEXT)]
FAXED = ReportOutcome(CallOutcome.FAX, "a fax machine answered")
HOLD_S = 35.0


def redirect(reason: str, text: str = TEXT) -> list[Action]:
    return [Record("speech_redirect_to_say", {"reason": reason}), RedirectToSay(text, reason)]


def cleared(mark: str) -> list[Action]:
    return [Record("mark_cleared", {"mark": mark})]


def started(after: str, *, cancel: bool = True) -> list[Action]:
    """The message starts after the callee's hello (or what stands for it); the wait's deadline stops."""
    return [
        *([CANCEL] if cancel else []),
        Speak(TEXT, "end:7.0"),
        Record("message_started", {"after": after}),
    ]


def held(after: str) -> list[Action]:
    """The wait for machine detection's verdict (its deadline replaces the listening one)."""
    return [StartDeadline(2, HOLD_S), Record("holding_for_amd", {"after": after}), AwaitVerdict()]


def noted(phase: Phase) -> Expected:
    """A verdict that is only noted (`answered_by`): the phase goes on and nothing is done."""
    return (phase, [])


TABLE: dict[Phase, dict[str, Expected]] = {
    Phase.CONNECTING: {
        "stream started": (Phase.SPEAKING, [Speak(TEXT, "end:7.0")]),
        "end mark": NOTHING,
        "prompt mark": NOTHING,
        "bye mark": NOTHING,
        "mark after clear": NOTHING,
        "agent mark": NOTHING,
        "key 1": NOTHING,
        "key 2": NOTHING,
        "key 9": NOTHING,
        "key 0 (agent)": NOTHING,
        "key 5 (none)": NOTHING,
        "script loaded": NOTHING,
        "agent connected": NOTHING,
        "agent ended": NOTHING,
        "deadline": NOTHING,
        "stale deadline": NOTHING,
        "stream stopped": NOTHING,
        "socket closed": (Phase.ENDED, []),
        "speech failed": NOTHING,
        "said by twilio": NOTHING,
        "token refused": NOTHING,
        "hello ended": NOTHING,
        "silence": NOTHING,
        "long speech": NOTHING,
        "speech started": NOTHING,
        "tone": NOTHING,
        # no stream yet: the media session holds an early verdict until `start` (not the flow's doing)
        "verdict human": NOTHING,
        "verdict unknown": NOTHING,
        "verdict machine_start": NOTHING,
        "verdict machine_end_beep": NOTHING,
        "verdict machine_end_silence": NOTHING,
        "verdict fax": NOTHING,
        "progress mark": NOTHING,
        "old progress mark": NOTHING,
        "vm mark": NOTHING,
    },
    Phase.SPEAKING: {
        "stream started": NOTHING,
        "end mark": (Phase.PROMPTING, [Played(None), Speak(PROMPT, "prompt:7.1")]),
        "prompt mark": NOTHING,
        "bye mark": NOTHING,
        "mark after clear": (Phase.SPEAKING, cleared("end:7.0")),
        "agent mark": NOTHING,
        "key 1": (Phase.ENDED, [STOP, CONFIRMED, *HANG_UP]),
        "key 2": (Phase.SPEAKING, [STOP, CLEAR, REPEAT, Speak(TEXT, "end:7.2")]),
        "key 9": (Phase.ENDED, [STOP, OPTED_OUT, *HANG_UP]),
        "key 0 (agent)": (Phase.WITH_AGENT, [STOP, CLEAR, *HANDED]),
        "key 5 (none)": NOTHING,
        "script loaded": NOTHING,
        "agent connected": NOTHING,
        "agent ended": NOTHING,
        "deadline": NOTHING,
        "stale deadline": NOTHING,
        "stream stopped": (Phase.ENDED, [STOP, STOPPED, HUNG_UP_EARLY, HangUp()]),
        "socket closed": (Phase.ENDED, [STOP, *redirect("socket closed")]),
        "speech failed": (Phase.SPEAKING, redirect("tts down")),
        "said by twilio": (Phase.ENDED, [SAID]),
        "token refused": (Phase.ENDED, [*REUSED, STOP, REFUSED]),
        "hello ended": NOTHING,  # the ear is for the wait before the message
        "silence": NOTHING,
        "long speech": NOTHING,
        "speech started": NOTHING,
        "tone": NOTHING,
        "verdict human": noted(Phase.SPEAKING),  # the message goes on
        "verdict unknown": noted(Phase.SPEAKING),
        "verdict machine_start": NOTHING,  # not final (Enable mode's early word)
        # The message played into a greeting: cut, and the voicemail (here the message itself, SETUP has no
        # text of its own) from its first word, in the new round.
        "verdict machine_end_beep": (Phase.LEAVING_VOICEMAIL, [STOP, CLEAR, Speak(TEXT, "vm:7.2")]),
        "verdict machine_end_silence": (Phase.LEAVING_VOICEMAIL, [STOP, CLEAR, Speak(TEXT, "vm:7.2")]),
        "verdict fax": (Phase.ENDED, [STOP, FAXED, *HANG_UP]),
        "progress mark": (Phase.SPEAKING, [Played(1500)]),
        "old progress mark": NOTHING,  # the cut message's: not even a mark_cleared record
        "vm mark": NOTHING,
    },
    Phase.PROMPTING: {
        "stream started": NOTHING,
        "end mark": NOTHING,
        "prompt mark": (Phase.AWAITING_KEY, [StartDeadline(1, 8.0)]),
        "bye mark": NOTHING,
        "mark after clear": (Phase.PROMPTING, cleared("end:7.0")),
        "agent mark": NOTHING,
        "key 1": (Phase.ENDED, [STOP, CONFIRMED, *HANG_UP]),
        "key 2": (Phase.SPEAKING, [STOP, CLEAR, REPEAT, Speak(TEXT, "end:7.2")]),
        "key 9": (Phase.ENDED, [STOP, OPTED_OUT, *HANG_UP]),
        "key 0 (agent)": (Phase.WITH_AGENT, [STOP, CLEAR, *HANDED]),
        "key 5 (none)": NOTHING,
        "script loaded": NOTHING,
        "agent connected": NOTHING,
        "agent ended": NOTHING,
        "deadline": NOTHING,
        "stale deadline": NOTHING,
        "stream stopped": (Phase.ENDED, [STOP, STOPPED]),  # heard: no outcome of ours
        "socket closed": (Phase.ENDED, [STOP]),  # heard: no <Say>
        "speech failed": (Phase.PROMPTING, redirect("tts down")),
        "said by twilio": (Phase.ENDED, [SAID]),
        "token refused": (Phase.ENDED, [*REUSED, STOP, REFUSED]),
        "hello ended": NOTHING,
        "silence": NOTHING,
        "long speech": NOTHING,
        "speech started": NOTHING,
        "tone": NOTHING,
        "verdict human": noted(Phase.PROMPTING),
        "verdict unknown": noted(Phase.PROMPTING),
        "verdict machine_start": NOTHING,  # not final (Enable mode's early word)
        # The message played to its end, but into a machine's greeting (not recorded): left again.
        "verdict machine_end_beep": (Phase.LEAVING_VOICEMAIL, [STOP, CLEAR, Speak(TEXT, "vm:7.2")]),
        "verdict machine_end_silence": (Phase.LEAVING_VOICEMAIL, [STOP, CLEAR, Speak(TEXT, "vm:7.2")]),
        "verdict fax": (Phase.ENDED, [STOP, FAXED, *HANG_UP]),
        "progress mark": NOTHING,  # the message is over
        "old progress mark": NOTHING,
        "vm mark": NOTHING,
    },
    Phase.AWAITING_KEY: {
        "stream started": NOTHING,
        "end mark": NOTHING,
        "prompt mark": NOTHING,
        "bye mark": NOTHING,
        "mark after clear": (Phase.AWAITING_KEY, cleared("end:7.0")),
        "agent mark": NOTHING,
        "key 1": (Phase.ENDED, [STOP, CANCEL, CONFIRMED, *HANG_UP]),
        "key 2": (Phase.SPEAKING, [CANCEL, STOP, CLEAR, REPEAT, Speak(TEXT, "end:7.2")]),
        "key 9": (Phase.ENDED, [STOP, CANCEL, OPTED_OUT, *HANG_UP]),
        "key 0 (agent)": (Phase.WITH_AGENT, [CANCEL, STOP, CLEAR, *HANDED]),
        "key 5 (none)": NOTHING,
        "script loaded": NOTHING,
        "agent connected": NOTHING,
        "agent ended": NOTHING,
        "deadline": (
            Phase.ENDED,
            [
                STOP,
                ReportOutcome(CallOutcome.HEARD, "the message and the prompt played; no key pressed"),
                *HANG_UP,
            ],
        ),
        "stale deadline": NOTHING,
        "stream stopped": (Phase.ENDED, [STOP, CANCEL, STOPPED]),
        "socket closed": (Phase.ENDED, [STOP, CANCEL]),
        "speech failed": NOTHING,  # nothing of ours is playing
        "said by twilio": (Phase.ENDED, [CANCEL, SAID]),
        "token refused": (Phase.ENDED, [*REUSED, STOP, CANCEL, REFUSED]),
        "hello ended": NOTHING,
        "silence": NOTHING,
        "long speech": NOTHING,
        "speech started": NOTHING,
        "tone": NOTHING,
        "verdict human": noted(Phase.AWAITING_KEY),  # the key window runs on
        "verdict unknown": noted(Phase.AWAITING_KEY),
        "verdict machine_start": NOTHING,  # not final (Enable mode's early word)
        # the key window's deadline stops: no "heard, no key" for a machine
        "verdict machine_end_beep": (Phase.LEAVING_VOICEMAIL, [CANCEL, STOP, CLEAR, Speak(TEXT, "vm:7.2")]),
        "verdict machine_end_silence": (
            Phase.LEAVING_VOICEMAIL,
            [CANCEL, STOP, CLEAR, Speak(TEXT, "vm:7.2")],
        ),
        "verdict fax": (Phase.ENDED, [STOP, CANCEL, FAXED, *HANG_UP]),
        "progress mark": NOTHING,
        "old progress mark": NOTHING,
        "vm mark": NOTHING,
    },
    Phase.WITH_AGENT: {
        "stream started": NOTHING,
        "end mark": NOTHING,
        "prompt mark": NOTHING,
        "bye mark": NOTHING,
        "mark after clear": (Phase.WITH_AGENT, cleared("end:7.1")),  # the message the key cut short
        "agent mark": (Phase.WITH_AGENT, [ForwardMark("agent:0.1.5")]),
        # Keys in a conversation are the agent's business (they are on the call's trail).
        "key 1": NOTHING,
        "key 2": NOTHING,
        "key 9": NOTHING,
        "key 0 (agent)": NOTHING,
        "key 5 (none)": NOTHING,
        "script loaded": NOTHING,
        "agent connected": (
            Phase.WITH_AGENT,
            [ReportOutcome(CallOutcome.AGENT, "handed to the agent (conversation conv1)")],
        ),
        "agent ended": (Phase.SAYING_GOODBYE, [Speak("Sorry.", "bye:7.2")]),
        "deadline": NOTHING,
        "stale deadline": NOTHING,
        "stream stopped": (Phase.ENDED, [CloseAgent("the caller hung up"), STOP, STOPPED]),
        "socket closed": (Phase.ENDED, [CloseAgent("socket closed"), STOP]),
        "speech failed": NOTHING,  # the agent speaks, not us
        "said by twilio": (Phase.ENDED, [CloseAgent("the call was given to Twilio <Say>"), SAID]),
        "token refused": (Phase.ENDED, [*REUSED, CloseAgent("stream token already used"), STOP, REFUSED]),
        "hello ended": NOTHING,
        "silence": NOTHING,
        "long speech": NOTHING,
        "speech started": NOTHING,
        "tone": NOTHING,
        # A person pressed the agent's key: whatever machine detection says is noted, the talk goes on.
        "verdict human": noted(Phase.WITH_AGENT),
        "verdict unknown": noted(Phase.WITH_AGENT),
        "verdict machine_start": NOTHING,  # not final (Enable mode's early word)
        "verdict machine_end_beep": noted(Phase.WITH_AGENT),
        "verdict machine_end_silence": noted(Phase.WITH_AGENT),
        "verdict fax": noted(Phase.WITH_AGENT),
        "progress mark": NOTHING,
        "old progress mark": NOTHING,
        "vm mark": NOTHING,
    },
    Phase.SAYING_GOODBYE: {
        "stream started": NOTHING,
        "end mark": NOTHING,
        "prompt mark": NOTHING,
        "bye mark": (
            Phase.ENDED,
            [STOP, CANCEL, Record("call_ending", {"reason": "the agent ended the conversation"}), *HANG_UP],
        ),
        "mark after clear": (Phase.SAYING_GOODBYE, cleared("end:7.1")),
        "agent mark": NOTHING,  # the conversation is over
        "key 1": NOTHING,  # a key during goodbye does nothing
        "key 2": NOTHING,
        "key 9": NOTHING,
        "key 0 (agent)": NOTHING,
        "key 5 (none)": NOTHING,
        "script loaded": NOTHING,
        "agent connected": NOTHING,
        "agent ended": NOTHING,
        "deadline": (
            Phase.ENDED,
            [STOP, Record("call_ending", {"reason": "the agent ended the conversation"}), *HANG_UP],
        ),
        "stale deadline": NOTHING,
        "stream stopped": (Phase.ENDED, [STOP, CANCEL, STOPPED]),
        "socket closed": (Phase.ENDED, [STOP, CANCEL]),
        "speech failed": (Phase.SAYING_GOODBYE, redirect("tts down")),
        "said by twilio": (Phase.ENDED, [CANCEL, SAID]),
        "token refused": (Phase.ENDED, [*REUSED, STOP, CANCEL, REFUSED]),
        "hello ended": NOTHING,
        "silence": NOTHING,
        "long speech": NOTHING,
        "speech started": NOTHING,
        "tone": NOTHING,
        "verdict human": noted(Phase.SAYING_GOODBYE),  # the goodbye plays on, its ending unchanged
        "verdict unknown": noted(Phase.SAYING_GOODBYE),
        "verdict machine_start": NOTHING,  # not final (Enable mode's early word)
        "verdict machine_end_beep": noted(Phase.SAYING_GOODBYE),
        "verdict machine_end_silence": noted(Phase.SAYING_GOODBYE),
        "verdict fax": noted(Phase.SAYING_GOODBYE),
        "progress mark": NOTHING,
        "old progress mark": NOTHING,
        "vm mark": NOTHING,
    },
    Phase.ENDED: {
        "stream started": NOTHING,
        "end mark": NOTHING,
        "prompt mark": NOTHING,
        "bye mark": NOTHING,
        "mark after clear": NOTHING,  # a late mark after the end does nothing
        "agent mark": NOTHING,
        "key 1": NOTHING,
        "key 2": NOTHING,
        "key 9": NOTHING,
        "key 0 (agent)": NOTHING,
        "key 5 (none)": NOTHING,
        "script loaded": NOTHING,
        "agent connected": NOTHING,  # no agent was handed this call
        "agent ended": NOTHING,
        "deadline": NOTHING,
        "stale deadline": NOTHING,
        "stream stopped": (Phase.ENDED, [STOPPED]),  # answered if not closed yet
        "socket closed": NOTHING,
        "speech failed": NOTHING,
        "said by twilio": (Phase.ENDED, [SAID]),  # the answer to the <Say> asked for as the socket closed
        "token refused": (Phase.ENDED, [*REUSED, REFUSED]),
        "hello ended": NOTHING,
        "silence": NOTHING,
        "long speech": NOTHING,
        "speech started": NOTHING,
        "tone": NOTHING,
        # the outcome is decided: a late verdict is not even noted
        "verdict human": NOTHING,
        "verdict unknown": NOTHING,
        "verdict machine_start": NOTHING,
        "verdict machine_end_beep": NOTHING,
        "verdict machine_end_silence": NOTHING,
        "verdict fax": NOTHING,
        "progress mark": NOTHING,
        "old progress mark": NOTHING,
        "vm mark": NOTHING,
    },
    Phase.LISTENING_FOR_HELLO: {
        "stream started": NOTHING,
        "end mark": NOTHING,  # nothing of ours was sent
        "prompt mark": NOTHING,
        "bye mark": NOTHING,
        # No `clear` was ever sent (round 0): the column's `end:7.-1` is no mark of ours, and like any mark
        # of another round it counts as not played.
        "mark after clear": (Phase.LISTENING_FOR_HELLO, cleared("end:7.-1")),
        "agent mark": NOTHING,
        # A machine presses no keys: a key is a person, and the message starts (the key is not a choice).
        "key 1": (Phase.SPEAKING, started("key 1: a person")),
        "key 2": (Phase.SPEAKING, started("key 2: a person")),
        "key 9": (Phase.SPEAKING, started("key 9: a person")),
        "key 0 (agent)": (Phase.SPEAKING, started("key 0: a person")),
        "key 5 (none)": (Phase.SPEAKING, started("key 5: a person")),
        "script loaded": NOTHING,
        "agent connected": NOTHING,
        "agent ended": NOTHING,
        "deadline": (Phase.SPEAKING, started("no audio from the callee in time", cancel=False)),
        "stale deadline": NOTHING,
        "stream stopped": (Phase.ENDED, [STOP, CANCEL, STOPPED, HUNG_UP_BEFORE, HangUp()]),
        "socket closed": (Phase.ENDED, [STOP, CANCEL, *redirect("socket closed")]),  # the message, by Twilio
        "speech failed": NOTHING,  # nothing of ours plays yet
        "said by twilio": (Phase.ENDED, [CANCEL, SAID]),
        "token refused": (Phase.ENDED, [*REUSED, STOP, CANCEL, REFUSED]),
        "hello ended": (Phase.SPEAKING, started("the callee's hello (600 ms)")),
        "silence": (Phase.SPEAKING, started("silence: no hello")),
        "long speech": (Phase.HOLDING_FOR_AMD, held("speech of 2400 ms")),
        "speech started": (Phase.LISTENING_FOR_HELLO, [CANCEL]),  # the ear decides from here
        "tone": (Phase.HOLDING_FOR_AMD, held("a steady tone")),  # a fax or a beep: the verdict names it
        "verdict human": (Phase.SPEAKING, started("machine detection said human")),
        "verdict unknown": (Phase.SPEAKING, started("machine detection said unknown")),  # a person
        "verdict machine_start": (Phase.HOLDING_FOR_AMD, held("machine detection heard a machine start")),
        # nothing of ours played: no `clear`, the same round
        "verdict machine_end_beep": (Phase.LEAVING_VOICEMAIL, [CANCEL, Speak(VOICEMAIL, "vm:7.0")]),
        "verdict machine_end_silence": (Phase.LEAVING_VOICEMAIL, [CANCEL, Speak(VOICEMAIL, "vm:7.0")]),
        "verdict fax": (Phase.ENDED, [STOP, CANCEL, FAXED, *HANG_UP]),
        "progress mark": NOTHING,
        "old progress mark": NOTHING,
        "vm mark": NOTHING,
    },
    Phase.HOLDING_FOR_AMD: {
        "stream started": NOTHING,
        "end mark": NOTHING,
        "prompt mark": NOTHING,
        "bye mark": NOTHING,
        "mark after clear": (Phase.HOLDING_FOR_AMD, cleared("end:7.-1")),  # as in listening
        "agent mark": NOTHING,
        "key 1": (Phase.SPEAKING, started("key 1: a person")),
        "key 2": (Phase.SPEAKING, started("key 2: a person")),
        "key 9": (Phase.SPEAKING, started("key 9: a person")),
        "key 0 (agent)": (Phase.SPEAKING, started("key 0: a person")),
        "key 5 (none)": (Phase.SPEAKING, started("key 5: a person")),
        "script loaded": NOTHING,
        "agent connected": NOTHING,
        "agent ended": NOTHING,
        "deadline": (Phase.SPEAKING, started("no verdict from machine detection in time", cancel=False)),
        "stale deadline": NOTHING,  # the listening backstop, replaced by the hold's
        "stream stopped": (
            Phase.ENDED,
            [
                STOP,
                CANCEL,
                STOPPED,
                ReportOutcome(
                    CallOutcome.MACHINE,
                    "hung up after a greeting longer than the speech threshold: a machine, no message left",
                ),
                HangUp(),
            ],
        ),
        "socket closed": (Phase.ENDED, [STOP, CANCEL, *redirect("socket closed")]),
        "speech failed": NOTHING,
        "said by twilio": (Phase.ENDED, [CANCEL, SAID]),
        "token refused": (Phase.ENDED, [*REUSED, STOP, CANCEL, REFUSED]),
        "hello ended": NOTHING,  # only the verdict (or its deadline) moves the call on
        "silence": NOTHING,
        "long speech": NOTHING,
        "speech started": NOTHING,
        "tone": NOTHING,
        "verdict human": (Phase.SPEAKING, started("machine detection said human")),
        "verdict unknown": (Phase.SPEAKING, started("machine detection said unknown")),
        # Not final (the greeting's end is still to be reported): the hold goes on, for machine_end_*.
        "verdict machine_start": NOTHING,
        "verdict machine_end_beep": (Phase.LEAVING_VOICEMAIL, [CANCEL, Speak(VOICEMAIL, "vm:7.0")]),
        "verdict machine_end_silence": (Phase.LEAVING_VOICEMAIL, [CANCEL, Speak(VOICEMAIL, "vm:7.0")]),
        "verdict fax": (Phase.ENDED, [STOP, CANCEL, FAXED, *HANG_UP]),
        "progress mark": NOTHING,
        "old progress mark": NOTHING,
        "vm mark": NOTHING,
    },
    Phase.LEAVING_VOICEMAIL: {
        "stream started": NOTHING,
        "end mark": NOTHING,  # the message's mark means nothing here (and the cut one's is of round 0)
        "prompt mark": NOTHING,
        "bye mark": NOTHING,
        "mark after clear": (Phase.LEAVING_VOICEMAIL, cleared("end:7.0")),  # the message the verdict cut
        "agent mark": NOTHING,
        "key 1": NOTHING,  # a machine's recording: no menu
        "key 2": NOTHING,
        "key 9": NOTHING,
        "key 0 (agent)": NOTHING,
        "key 5 (none)": NOTHING,
        "script loaded": NOTHING,
        "agent connected": NOTHING,
        "agent ended": NOTHING,
        "deadline": NOTHING,  # none runs while the voicemail plays (nor while the message does)
        "stale deadline": NOTHING,
        "stream stopped": (
            Phase.ENDED,
            [
                STOP,
                STOPPED,
                ReportOutcome(CallOutcome.MACHINE, "the machine hung up before the voicemail message ended"),
                HangUp(),
            ],
        ),
        "socket closed": (Phase.ENDED, [STOP, *redirect("socket closed", VOICEMAIL)]),
        "speech failed": (Phase.LEAVING_VOICEMAIL, redirect("tts down", VOICEMAIL)),
        "said by twilio": (Phase.ENDED, [SAID]),
        "token refused": (Phase.ENDED, [*REUSED, STOP, REFUSED]),
        "hello ended": NOTHING,
        "silence": NOTHING,
        "long speech": NOTHING,
        "speech started": NOTHING,
        "tone": NOTHING,
        # The first verdict was the call's: later ones do nothing.
        "verdict human": NOTHING,
        "verdict unknown": NOTHING,
        "verdict machine_start": NOTHING,
        "verdict machine_end_beep": NOTHING,
        "verdict machine_end_silence": NOTHING,
        "verdict fax": NOTHING,
        "progress mark": (Phase.LEAVING_VOICEMAIL, [Played(1500)]),
        "old progress mark": NOTHING,  # the cut message's
        "vm mark": (
            Phase.ENDED,
            [
                Played(None),
                STOP,
                ReportOutcome(CallOutcome.VOICEMAIL_LEFT, "the whole message was left after the beep"),
                *HANG_UP,
            ],
        ),
    },
}

ROWS = [(phase, column) for phase in TABLE for column in TABLE[phase]]


def test_the_states_are_in_their_phases_and_the_table_covers_every_pair() -> None:
    assert all(state.phase == phase for phase, state in STATES.items())
    assert set(STATES) == set(Phase) == set(TABLE)
    for phase, row in TABLE.items():
        assert list(row) == list(COLUMNS), phase  # every event, in the columns' order
    assert len(ROWS) == len(Phase) * len(COLUMNS)


def test_the_states_are_the_ones_the_table_means() -> None:
    # what the columns' marks and deadlines are built from
    assert [STATES[p].round for p in Phase] == [0, 1, 1, 1, 2, 2, 1, 0, 0, 1]
    assert (LISTENING.timer, LISTENING.armed) == (1, True)
    assert (HOLDING.timer, HOLDING.armed) == (2, True)
    assert (LEAVING_VOICEMAIL.timer, LEAVING_VOICEMAIL.armed) == (1, False)
    # only the voicemail state has had a verdict: every other live state takes its first one
    assert [p for p, s in STATES.items() if s.answered_by is not None] == [Phase.LEAVING_VOICEMAIL]
    assert LEAVING_VOICEMAIL.answered_by == "machine_end_beep"


@pytest.mark.parametrize(("phase", "column"), ROWS, ids=[f"{p.value}-{c}" for p, c in ROWS])
def test_each_event_in_each_phase(phase: Phase, column: str) -> None:
    before = STATES[phase]
    after, actions = step(before, COLUMNS[column](before))
    expected = TABLE[phase][column]
    if expected is NOTHING:
        assert after == before
        assert actions == []
    else:
        assert (after.phase, actions) == expected
        if after.phase == Phase.ENDED:
            assert not after.armed  # nothing runs on in an ended call
        if expected == noted(phase):
            # noted only: the verdict, and nothing else about the call, changed
            assert column in VERDICTS and after != before
            assert replace(after, answered_by=None) == replace(before, answered_by=None)
    if column in VERDICTS and phase not in (Phase.CONNECTING, Phase.ENDED):
        # a live call's first final verdict is its own, whatever it then does (machine_start is not final)
        final = VERDICTS[column] != "machine_start"
        assert after.answered_by == (before.answered_by or (VERDICTS[column] if final else None))


# --- marks and their rounds -------------------------------------------------------------------------


def test_marks_echoed_after_a_clear_do_not_count_and_the_new_round_does() -> None:
    call = run(CONNECTING, StreamStarted(SETUP), ScriptLoaded(SCRIPT))
    call, actions = actions_of(call, KeyPressed("2"))
    assert call.round == 1 and actions[-1] == Speak(TEXT, "end:7.1")
    # Twilio echoes the flushed mark at once: not played
    call, actions = actions_of(call, MarkEchoed("end:7.0"))
    assert call.phase == Phase.SPEAKING and actions == cleared("end:7.0")
    call, actions = actions_of(call, MarkEchoed("end:7.1"))
    assert call.phase == Phase.PROMPTING and actions == [Played(None), Speak(PROMPT, "prompt:7.1")]


def test_a_repeat_in_the_key_window_restarts_it_and_the_old_deadline_is_stale() -> None:
    call = run(AWAITING_KEY, KeyPressed("2"), MarkEchoed("end:7.2"), MarkEchoed("prompt:7.2"))
    assert call.phase == Phase.AWAITING_KEY and call.timer == 2 and call.armed
    assert step(call, DeadlinePassed(1)) == (call, [])
    ended, actions = step(call, DeadlinePassed(2))
    heard = ReportOutcome(CallOutcome.HEARD, "the message and the prompt played; no key pressed")
    assert ended.phase == Phase.ENDED and actions == [STOP, heard, *HANG_UP]


# --- the script arrives late --------------------------------------------------------------------------


def test_a_key_before_the_script_waits_for_it_then_counts() -> None:
    call, actions = actions_of(CONNECTING, StreamStarted(SETUP), KeyPressed("1"))
    assert actions == [AwaitScript()] and call.pending == (KeyPressed("1"),)
    call, actions = step(call, ScriptLoaded(SCRIPT))
    assert call.phase == Phase.ENDED and actions == [STOP, CONFIRMED, *HANG_UP]
    assert call.pending == ()


def test_the_end_mark_before_the_script_waits_for_it() -> None:
    call, actions = actions_of(CONNECTING, StreamStarted(SETUP), MarkEchoed("end:7.0"))
    assert call.phase == Phase.SPEAKING and actions == [AwaitScript()]
    call, actions = step(call, ScriptLoaded(SCRIPT))
    assert call.phase == Phase.PROMPTING and actions == [Played(None), Speak(PROMPT, "prompt:7.0")]


def test_without_a_script_the_message_ends_heard_and_only_repeat_and_opt_out_work() -> None:
    call = run(CONNECTING, StreamStarted(SETUP), ScriptLoaded(None))
    assert step(call, KeyPressed("1")) == (call, [])  # no prompt: nothing to confirm
    assert step(call, KeyPressed("0")) == (call, [])  # no script: no agent offer
    assert step(call, KeyPressed("2"))[0].round == 1
    assert step(call, KeyPressed("9"))[1] == [STOP, OPTED_OUT, *HANG_UP]
    ended, actions = step(call, MarkEchoed("end:7.0"))
    heard = ReportOutcome(CallOutcome.HEARD, "end mark echoed: the message played to the end")
    assert ended.phase == Phase.ENDED and actions == [Played(None), STOP, heard, *HANG_UP]


# --- the menus ----------------------------------------------------------------------------------------

ALERT = Setup(call_id=7, kind=CallKind.ANNOUNCEMENT, text=TEXT, agent=True, script=True)
REMINDER = CallScript(
    prompt="Press 1 to confirm, 2 to cancel, 3 for later.",
    repeat_keys=frozenset({"4"}),
    decline_key="2",
    snooze_key="3",
)


def test_each_menu_names_its_keys() -> None:
    assert menu_for(ALERT, None) == {"2": Choice.REPEAT, "9": Choice.OPT_OUT}
    assert menu_for(ALERT, CallScript(prompt=None, repeat_keys=frozenset({"2", "5"}))) == {
        "2": Choice.REPEAT,
        "5": Choice.REPEAT,
        "9": Choice.OPT_OUT,
    }
    assert menu_for(ALERT, SCRIPT) == {
        "1": Choice.CONFIRM,
        "2": Choice.REPEAT,
        "9": Choice.OPT_OUT,
        "0": Choice.AGENT,
    }
    assert menu_for(ALERT, REMINDER) == {
        "1": Choice.CONFIRM,
        "2": Choice.DECLINE,
        "3": Choice.SNOOZE,
        "4": Choice.REPEAT,
        "9": Choice.OPT_OUT,
    }
    # a reminder that asks nothing has no cancel and no "later"
    assert menu_for(ALERT, replace(REMINDER, prompt=None)) == {"4": Choice.REPEAT, "9": Choice.OPT_OUT}
    # without an agent configured, an offer's key does nothing
    assert "0" not in menu_for(replace(ALERT, agent=False), SCRIPT)
    greeting = Setup(call_id=7, kind=CallKind.GREETING, text=TEXT, agent=True, line_offer=KEY_OFFER)
    assert menu_for(greeting, None) == {"0": Choice.AGENT}
    assert menu_for(replace(greeting, line_offer=None), None) == {}


def test_a_digit_both_keys_would_claim_goes_to_the_more_binding() -> None:
    # (the API refuses such options; were one stored, the order is the old if/elif chain's)
    both = CallScript(prompt=PROMPT, repeat_keys=frozenset({"1", "9"}), agent=AgentOffer(After.KEY, key="1"))
    assert menu_for(ALERT, both) == {"1": Choice.AGENT, "9": Choice.OPT_OUT}


@pytest.mark.parametrize(
    ("digit", "outcome", "why"),
    [
        ("1", CallOutcome.CONFIRMED, "pressed 1 to confirm"),
        ("2", CallOutcome.DECLINED, "pressed 2 to cancel"),
        ("3", CallOutcome.SNOOZED, "pressed 3 to be called again later"),
        ("9", CallOutcome.OPTED_OUT, "pressed 9: do not call this number again"),
    ],
)
def test_a_reminders_keys_end_it_with_what_they_mean(digit: str, outcome: CallOutcome, why: str) -> None:
    call = run(CONNECTING, StreamStarted(ALERT), ScriptLoaded(REMINDER), MarkEchoed("end:7.0"))
    assert call.phase == Phase.PROMPTING
    ended, actions = step(call, KeyPressed(digit))
    assert ended.phase == Phase.ENDED and actions == [STOP, ReportOutcome(outcome, why), *HANG_UP]


def test_a_reminder_repeats_on_its_own_key_only() -> None:
    call = run(CONNECTING, StreamStarted(ALERT), ScriptLoaded(REMINDER))
    again, actions = step(call, KeyPressed("4"))
    assert again.phase == Phase.SPEAKING and Record("repeat", {"digit": "4"}) in actions


# --- the agent ----------------------------------------------------------------------------------------


def test_agent_after_the_message_then_unreachable_ends_heard_after_the_apology() -> None:
    after = CallScript(prompt=None, agent=AgentOffer(After.ANNOUNCEMENT))
    call = run(CONNECTING, StreamStarted(ALERT), ScriptLoaded(after))
    call, actions = step(call, MarkEchoed("end:7.0"))
    assert call.phase == Phase.WITH_AGENT
    assert actions == [
        Played(None),
        Record("agent_handoff", {"after": "announcement"}),
        HandOver(AgentOffer(After.ANNOUNCEMENT), TEXT),
    ]
    call, actions = step(call, AgentEnded(UNREACHABLE))
    assert call.phase == Phase.SAYING_GOODBYE and actions == [Speak(ALERT.apology, "bye:7.0")]
    call, actions = step(call, MarkEchoed("bye:7.0"))
    assert actions == [STOP, ReportOutcome(CallOutcome.HEARD, "agent unreachable"), *HANG_UP]


def test_agent_from_the_start_that_fails_ends_failed() -> None:
    start = replace(ALERT, offer=AgentOffer(After.START), script=False)
    call, actions = step(CONNECTING, StreamStarted(start))
    assert call.phase == Phase.WITH_AGENT
    assert actions == [Record("agent_handoff", {"after": "start"}), HandOver(AgentOffer(After.START), "")]
    call = run(call, AgentEnded(UNREACHABLE))
    _, actions = step(call, MarkEchoed("bye:7.0"))
    assert ReportOutcome(CallOutcome.FAILED, "agent unreachable") in actions


def test_without_an_agent_the_hand_over_is_an_apology() -> None:
    start = replace(ALERT, offer=AgentOffer(After.START), script=False, agent=False)
    call, actions = step(CONNECTING, StreamStarted(start))
    assert call.phase == Phase.SAYING_GOODBYE and actions == [Speak(ALERT.apology, "bye:7.0")]
    assert step(call, KeyPressed("9")) == (call, [])  # saying goodbye: keys do nothing
    _, actions = step(call, MarkEchoed("bye:7.0"))
    assert actions == [STOP, ReportOutcome(CallOutcome.FAILED, "agent mode is not configured"), *HANG_UP]


def test_the_agents_goodbye_hangs_up_on_its_mark_or_after_the_grace() -> None:
    call, actions = step(WITH_AGENT, AgentEnded(AGENT_SAID_BYE))
    assert actions == [SendMark("bye:7.2"), StartDeadline(1, BYE_GRACE_S)]
    assert call.ending is not None and call.ending.outcome is None  # recorded when the agent took the call


@pytest.mark.parametrize(
    ("end", "said"),
    [
        (AgentEnd(EndKind.TIME_LIMIT, "the conversation reached 600 s", connected=True), "Time is up."),
        (AgentEnd(EndKind.FAILED, "agent socket dropped", connected=True), "Sorry."),
    ],
)
def test_a_conversation_cut_short_clears_the_agents_audio_then_speaks(end: AgentEnd, said: str) -> None:
    call, actions = step(WITH_AGENT, AgentEnded(end))
    assert actions == [STOP, CLEAR, Speak(said, "bye:7.3")]
    _, actions = step(call, MarkEchoed("bye:7.3"))
    assert Record("call_ending", {"reason": end.reason}) in actions  # AGENT was recorded at connection


def test_the_agent_connecting_as_the_caller_hangs_up_still_counts() -> None:
    call = run(WITH_AGENT, StreamStopped())
    assert step(call, AgentConnected("conv1"))[1] == [
        ReportOutcome(CallOutcome.AGENT, "handed to the agent (conversation conv1)")
    ]


def test_the_greeting_line_hands_over_after_its_greeting_and_ignores_the_alert_keys() -> None:
    greeting = Setup(
        call_id=7, kind=CallKind.GREETING, text=TEXT, agent=True, line_offer=AgentOffer(After.ANNOUNCEMENT)
    )
    call = run(CONNECTING, StreamStarted(greeting))
    assert call.script_known  # nothing to wait for
    for digit in "129":
        assert step(call, KeyPressed(digit)) == (call, [])
    call, actions = step(call, MarkEchoed("end:7.0"))
    assert call.phase == Phase.WITH_AGENT and actions[-1] == HandOver(AgentOffer(After.ANNOUNCEMENT), TEXT)
    # without an agent the greeting is heard and the call ends
    plain = run(CONNECTING, StreamStarted(replace(greeting, agent=False)))
    heard = ReportOutcome(CallOutcome.HEARD, "end mark echoed: the message played to the end")
    assert step(plain, MarkEchoed("end:7.0"))[1] == [Played(None), STOP, heard, *HANG_UP]


def test_an_offer_in_the_message_itself_waits_for_its_key() -> None:
    no_prompt = CallScript(prompt=None, window_s=5.0, agent=KEY_OFFER)
    call, actions = actions_of(
        CONNECTING, StreamStarted(ALERT), ScriptLoaded(no_prompt), MarkEchoed("end:7.0")
    )
    assert call.phase == Phase.AWAITING_KEY and actions == [Played(None), StartDeadline(1, 5.0)]
    call, actions = step(call, KeyPressed("0"))
    assert call.phase == Phase.WITH_AGENT and actions == [CANCEL, STOP, CLEAR, *HANDED]
    # the greeting line's key offer has no script: the default window
    greeting = Setup(call_id=7, kind=CallKind.GREETING, text=TEXT, agent=True, line_offer=KEY_OFFER)
    _, actions = actions_of(CONNECTING, StreamStarted(greeting), MarkEchoed("end:7.0"))
    assert actions == [Played(None), StartDeadline(1, WINDOW_S)]


# --- who answered -------------------------------------------------------------------------------------

HANG_UP_SETUP = replace(SETUP_LISTEN, hang_up_on_machine=True)


def test_listening_starts_with_the_backstop_and_nothing_of_ours_plays() -> None:
    call, actions = step(CONNECTING, StreamStarted(SETUP_LISTEN))
    assert call.phase == Phase.LISTENING_FOR_HELLO and actions == [StartDeadline(1, 3.0)]
    # the agent from the start goes first: there is no message to wait with
    start = replace(SETUP_LISTEN, offer=AgentOffer(After.START), script=False)
    call, actions = step(CONNECTING, StreamStarted(start))
    assert call.phase == Phase.WITH_AGENT and actions[-1] == HandOver(AgentOffer(After.START), "")


def test_the_hello_path_starts_the_message_and_stops_the_backstop() -> None:
    call, actions = step(LISTENING, CalleeHeard(Hearing.HELLO_ENDED, 450))
    assert call.phase == Phase.SPEAKING and not call.armed
    assert actions == [
        CANCEL,
        Speak(TEXT, "end:7.0"),
        Record("message_started", {"after": "the callee's hello (450 ms)"}),
    ]
    assert step(call, DeadlinePassed(1)) == (call, [])  # the backstop, should its task fire anyway
    assert step(call, CalleeHeard(Hearing.HELLO_ENDED, 300)) == (call, [])  # the ear is done
    call, actions = step(call, MarkEchoed("end:7.0"))
    assert call.phase == Phase.PROMPTING and actions == [Played(None), Speak(PROMPT, "prompt:7.0")]


def test_the_silence_path_starts_the_message() -> None:
    call, actions = step(LISTENING, CalleeHeard(Hearing.SILENCE))
    assert call.phase == Phase.SPEAKING and actions == started("silence: no hello")
    ended = run(call, MarkEchoed("end:7.0"), MarkEchoed("prompt:7.0"), KeyPressed("1"))
    assert ended.phase == Phase.ENDED


def test_a_long_speech_without_machine_detection_waits_for_its_end() -> None:
    listening = run(CONNECTING, StreamStarted(replace(SETUP_LISTEN, amd=False)), ScriptLoaded(SCRIPT))
    # The utterance's start stops the backstop (it is for audio that never comes): from here the ear
    # decides, however long the speech goes on.
    call, actions = step(listening, CalleeHeard(Hearing.SPEECH_STARTED))
    assert call.phase == Phase.LISTENING_FOR_HELLO and not call.armed and actions == [CancelDeadline()]
    assert step(call, DeadlinePassed(1)) == (call, [])
    speaking, actions = step(call, CalleeHeard(Hearing.LONG_SPEECH, 2400))
    assert (speaking, actions) == (call, [])  # no verdict will come: no hold
    call, actions = step(call, CalleeHeard(Hearing.HELLO_ENDED, 5200))
    assert call.phase == Phase.SPEAKING and actions == started("the callee's hello (5200 ms)", cancel=False)
    # Before any audio, the backstop starts the message.
    call, actions = step(listening, DeadlinePassed(1))
    assert call.phase == Phase.SPEAKING and actions == started(
        "no audio from the callee in time", cancel=False
    )
    # A tone without machine detection is not a hello, and no verdict will name it: nothing.
    assert step(listening, CalleeHeard(Hearing.TONE, 100)) == (listening, [])


def test_holding_until_the_deadline_then_the_message() -> None:
    assert step(HOLDING, DeadlinePassed(1)) == (HOLDING, [])  # the listening backstop was replaced
    call, actions = step(HOLDING, DeadlinePassed(2))
    assert call.phase == Phase.SPEAKING and not call.armed
    assert actions == started("no verdict from machine detection in time", cancel=False)
    assert call.answered_by is None
    # the verdict that comes late finds the message playing: a person is only noted...
    assert step(call, MachineVerdict("human"))[1] == []
    # ... a machine still gets the voicemail
    _, actions = step(call, MachineVerdict("machine_end_beep"))
    assert actions == [STOP, CLEAR, Speak(VOICEMAIL, "vm:7.1")]


def test_a_machine_after_holding_gets_the_voicemail_and_it_is_left() -> None:
    call, actions = step(HOLDING, MachineVerdict("machine_end_beep", 9800))
    assert call.phase == Phase.LEAVING_VOICEMAIL and call.round == 0  # nothing of ours to clear
    assert actions == [CANCEL, Speak(VOICEMAIL, "vm:7.0")]
    assert step(call, MarkEchoed("played:500:7.0"))[1] == [Played(500)]
    ended, actions = step(call, MarkEchoed("vm:7.0"))
    left = ReportOutcome(CallOutcome.VOICEMAIL_LEFT, "the whole message was left after the beep")
    assert ended.phase == Phase.ENDED and actions == [Played(None), STOP, left, *HANG_UP]


@pytest.mark.parametrize(
    ("answered_by", "after"),
    [
        ("machine_end_beep", "after the beep"),
        ("machine_end_silence", "after the greeting (no beep heard)"),
        ("machine_end_other", "after the greeting (no beep heard)"),
    ],
)
def test_a_machine_mid_message_clears_it_and_leaves_the_voicemail_from_its_first_word(
    answered_by: str, after: str
) -> None:
    call = run(LISTENING, CalleeHeard(Hearing.HELLO_ENDED, 600))
    assert step(call, MarkEchoed("played:1000:7.0"))[1] == [Played(1000)]
    call, actions = step(call, MachineVerdict(answered_by, 4100))
    assert call.phase == Phase.LEAVING_VOICEMAIL and call.round == 1 and call.answered_by == answered_by
    assert actions == [STOP, CLEAR, Speak(VOICEMAIL, "vm:7.1")]
    # Twilio echoes the cut message's marks at once: none counts
    assert step(call, MarkEchoed("played:1500:7.0")) == (call, [])
    assert step(call, MarkEchoed("end:7.0")) == (call, cleared("end:7.0"))
    # the voicemail's own progress counts from its first word
    assert step(call, MarkEchoed("played:500:7.1")) == (call, [Played(500)])
    ended, actions = step(call, MarkEchoed("vm:7.1"))
    left = ReportOutcome(CallOutcome.VOICEMAIL_LEFT, f"the whole message was left {after}")
    assert ended.phase == Phase.ENDED and actions == [Played(None), STOP, left, *HANG_UP]


@pytest.mark.parametrize(
    ("events", "stopping"),
    [
        ((), [STOP, CANCEL]),  # holding: the hold's deadline stops
        ((DeadlinePassed(2),), [STOP]),  # the message plays: it stops, no `clear` needed to hang up
        ((DeadlinePassed(2), MarkEchoed("end:7.0")), [STOP]),  # prompting
    ],
)
def test_on_machine_hang_up_ends_the_call_without_a_message(
    events: tuple[Event, ...], stopping: list[Action]
) -> None:
    call = run(
        CONNECTING,
        StreamStarted(HANG_UP_SETUP),
        ScriptLoaded(SCRIPT),
        CalleeHeard(Hearing.LONG_SPEECH, 2400),
        *events,
    )
    ended, actions = step(call, MachineVerdict("machine_end_beep"))
    why = "an answering machine (machine_end_beep): on_machine is hang_up"
    assert ended.phase == Phase.ENDED and actions == [
        *stopping,
        ReportOutcome(CallOutcome.MACHINE, why),
        *HANG_UP,
    ]
    assert not any(isinstance(action, Speak) for action in actions)


def test_a_fax_ends_the_call_mid_message() -> None:
    call = run(LISTENING, CalleeHeard(Hearing.SILENCE))
    ended, actions = step(call, MachineVerdict("fax", 2100))
    assert ended.phase == Phase.ENDED and actions == [STOP, FAXED, *HANG_UP]
    assert ended.answered_by == "fax"
    assert step(ended, MarkEchoed("end:7.0")) == (ended, [])  # its echo comes too late to count


def test_a_verdict_after_the_end_changes_no_outcome() -> None:
    heard = run(CONNECTING, StreamStarted(SETUP_LISTEN), ScriptLoaded(None), CalleeHeard(Hearing.SILENCE))
    ended, actions = step(heard, MarkEchoed("end:7.0"))
    assert ReportOutcome(CallOutcome.HEARD, "end mark echoed: the message played to the end") in actions
    for answered_by in ("machine_end_beep", "fax", "human"):
        assert step(ended, MachineVerdict(answered_by)) == (ended, [])


def test_a_verdict_with_the_agent_or_in_its_goodbye_changes_no_outcome() -> None:
    with_agent = run(LISTENING, CalleeHeard(Hearing.HELLO_ENDED, 600), KeyPressed("0"))
    assert with_agent.phase == Phase.WITH_AGENT
    call, actions = step(with_agent, MachineVerdict("machine_end_beep"))
    assert call.phase == Phase.WITH_AGENT and actions == [] and call.answered_by == "machine_end_beep"
    # the conversation goes on and ends as it would have: the agent's outcome was recorded at connection
    call, actions = step(call, AgentEnded(AGENT_SAID_BYE))
    assert actions == [SendMark("bye:7.1"), StartDeadline(2, BYE_GRACE_S)]
    call, actions = step(call, MarkEchoed("bye:7.1"))
    assert actions == [STOP, CANCEL, Record("call_ending", {"reason": AGENT_SAID_BYE.reason}), *HANG_UP]
    # saying goodbye: a fax verdict neither ends the call nor changes the ending's outcome
    goodbye = run(with_agent, AgentEnded(UNREACHABLE))
    call, actions = step(goodbye, MachineVerdict("fax"))
    assert call.phase == Phase.SAYING_GOODBYE and actions == [] and call.ending == goodbye.ending
    _, actions = step(call, MarkEchoed("bye:7.1"))
    assert actions == [STOP, ReportOutcome(CallOutcome.HEARD, "agent unreachable"), *HANG_UP]


def test_the_first_verdict_is_the_calls() -> None:
    call, actions = step(LISTENING, MachineVerdict("human", 1800))
    assert call.phase == Phase.SPEAKING and actions == started("machine detection said human")
    for later in ("machine_end_beep", "fax", "unknown"):
        assert step(call, MachineVerdict(later)) == (call, [])  # the message goes on
    assert call.answered_by == "human"


def test_without_a_voicemail_text_the_machine_is_told_the_message() -> None:
    holding = run(
        CONNECTING,
        StreamStarted(replace(SETUP_LISTEN, voicemail=None)),
        ScriptLoaded(SCRIPT),
        CalleeHeard(Hearing.LONG_SPEECH, 2400),
    )
    call, actions = step(holding, MachineVerdict("machine_end_silence"))
    assert call.phase == Phase.LEAVING_VOICEMAIL and actions == [CANCEL, Speak(TEXT, "vm:7.0")]
    _, actions = step(call, SocketClosed("socket closed"))
    assert actions == [STOP, *redirect("socket closed", TEXT)]


def test_a_broken_socket_while_leaving_the_voicemail_has_twilio_say_it() -> None:
    call, actions = step(LEAVING_VOICEMAIL, SocketClosed("socket reset"))
    assert call.phase == Phase.ENDED and actions == [STOP, *redirect("socket reset", VOICEMAIL)]
    _, actions = step(call, SaidByTwilio("socket reset"))
    said = ReportOutcome(CallOutcome.SAID_BY_TWILIO, "socket reset", "spoken by Twilio <Say>: socket reset")
    assert actions == [said]


@pytest.mark.parametrize(
    ("mark", "played"),
    [
        ("played:0:7.0", [Played(0)]),
        ("played:1500:7.0", [Played(1500)]),
        ("played:123456789:7.0", [Played(123456789)]),  # nine digits: the longest taken
        ("played:123456789012:7.0", []),  # twelve: junk, not a number to store
        ("played:abc:7.0", []),
        ("played::7.0", []),
        ("played:-500:7.0", []),
        ("played:+500:7.0", []),
        ("played:\u0661\u0665:7.0", []),  # digits, but not ASCII ones
        ("played:1500.0", []),  # no call id part: the number would be "1500.0"
        ("played:1500:7.1", []),  # a round not yet begun
    ],
)
def test_progress_marks_parse_and_junk_is_dropped(mark: str, played: list[Action]) -> None:
    call = run(LISTENING, CalleeHeard(Hearing.SILENCE))
    assert step(call, MarkEchoed(mark)) == (call, played)  # the state never changes


def test_progress_marks_count_only_while_the_message_or_the_voicemail_plays() -> None:
    for state in (LISTENING, HOLDING, PROMPTING, AWAITING_KEY, WITH_AGENT, SAYING_GOODBYE, ENDED):
        mark = MarkEchoed(f"played:1500:7.{state.round}")
        assert step(state, mark) == (state, []), state.phase


def test_machine_start_holds_and_the_greetings_end_leaves_the_voicemail() -> None:
    """`machine_start` (MachineDetection=Enable's early word) is not final: the hold waits for the end."""
    call, actions = step(LISTENING, MachineVerdict("machine_start", 900))
    assert call.phase == Phase.HOLDING_FOR_AMD and call.answered_by is None
    assert actions == held("machine detection heard a machine start")
    call, actions = step(call, MachineVerdict("machine_end_beep", 4100))
    assert call.phase == Phase.LEAVING_VOICEMAIL and call.answered_by == "machine_end_beep"
    assert actions == [CANCEL, Speak(VOICEMAIL, "vm:7.0")]
