"""A call's flow as a pure state machine: its phases, and what each event does in each of them.

`step(call, event)` gives the call's next state and the actions to carry out, in order. It does no I/O and
knows no socket, task or clock: `telephony/media.py` reads the media socket, turns what happens into events
(a mark echoed, a key pressed, the agent's end, a deadline passing, the stream stopping), feeds them in and
carries the actions out (frames, marks and `clear` on the socket, timers, the agent, REST calls, the
store). The outcome of a call is decided here, and only here.

    connecting -> listening for hello -> speaking -> prompting -> awaiting key -> ended
                    |  (long speech)          |  (the agent after the message, or on its key)  ^
                    v                         v                                                |
               holding for AMD          with the agent -> saying goodbye ---------------------+
                    |  machine_end_* (from any phase before the message was heard)             |
                    +-----------------> leaving voicemail ---------------------------------------+

Every mark we send carries the round it was sent in (`end:<call id>.<round>`): a `clear` makes Twilio
echo every pending mark at once (protocols.md), so a `clear` starts a new round and the echoes of the old
one count as not played. While the message or a voicemail plays, `played:<ms>:<call id>.<round>` marks
every half second tell how much of it has played (`played_ms`).

Who answered (design.md, "Who answered"): an announcement that starts after hello listens first. The
session's ear (`telephony/hello.py`) reports a short utterance's end, the silence of `hello_timeout_ms`, or
an utterance that reached Twilio's speech threshold (a machine's greeting in the making: hold for the
verdict). Twilio's asynchronous machine detection (`POST /twilio/amd`) gives the verdict: `human` and
`unknown` (a person, as Twilio advises) start the message if it has not started; `machine_end_*` stops
whatever plays and leaves the voicemail message from its first word (or hangs up, `on_machine: hang_up`);
`fax` ends the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, assert_never

from announcer.store.models import AnsweredBy, CallKind, CallOutcome
from announcer.telephony.handoff import MARK_PREFIX as AGENT_MARK_PREFIX
from announcer.telephony.handoff import After, AgentEnd, AgentOffer, EndKind

# --- the keys -----------------------------------------------------------------------------------------
CONFIRM_KEY = "1"  # with options.confirm; a page's acknowledge
REPEAT_KEY = "2"  # an alert's, always (options.repeat_key adds one)
DECLINE_KEY = "2"  # a reminder's (a schedule with `confirm`): cancel it
SNOOZE_KEY = "3"  # a reminder's: call me again later
ESCALATE_KEY = "3"  # a page's: escalate to the next person now (a decline)
OPT_OUT_KEY = "9"  # an alert's and a reminder's (not a page's): do not call this number again

# --- the marks: `<prefix><call id>.<round>` -------------------------------------------------------------
END_MARK_PREFIX = "end:"  # the message; its echo means "heard"
PROMPT_MARK_PREFIX = "prompt:"
BYE_MARK_PREFIX = "bye:"  # the last words after an agent conversation (or instead of one)
VOICEMAIL_MARK_PREFIX = "vm:"  # the voicemail message; its echo means "voicemail left"
PLAYED_MARK_PREFIX = "played:"  # `played:<ms>:<call id>.<round>`: that much of the message has played
PLAYED_EVERY_FRAMES = 25  # a progress mark every 500 ms of the message (2 more messages a second each way)

# The verdicts that mean a machine's greeting ended (Twilio's AnsweredBy: store/models.py)
MACHINE_ENDS = frozenset(
    {AnsweredBy.MACHINE_END_BEEP, AnsweredBy.MACHINE_END_SILENCE, AnsweredBy.MACHINE_END_OTHER}
)

BYE_GRACE_S = 60.0  # the longest the agent's last words may take to play before the call is hung up
# How long a key is waited for once everything has played: long enough to find the key, short enough
# not to annoy.
WINDOW_S = 8.0
APOLOGY = "We are sorry, our assistant is not available right now. Goodbye."
TIME_LIMIT = "We have reached the time limit for this call. Thank you, goodbye."


class Phase(StrEnum):
    CONNECTING = "connecting"  # the socket is open; no admitted `start` yet
    SPEAKING = "speaking"  # the message is playing (its end mark has not come back)
    PROMPTING = "prompting"  # the message played; the prompt is playing
    AWAITING_KEY = "awaiting_key"  # everything played; a deadline runs until a key
    WITH_AGENT = "with_agent"  # handed to the agent: the caller's audio and keys are the agent's
    SAYING_GOODBYE = "saying_goodbye"  # the last words play (or the agent's do), then the call is hung up
    ENDED = "ended"  # hung up, stopped, given to Twilio's <Say>, or not ours (a reused token)
    LISTENING_FOR_HELLO = "listening_for_hello"  # the callee's audio is heard; nothing of ours plays
    HOLDING_FOR_AMD = "holding_for_amd"  # a long greeting: machine detection's verdict is awaited
    LEAVING_VOICEMAIL = "leaving_voicemail"  # a machine's greeting ended: the voicemail message plays


# A hang-up in these is no longer "hung up early", and a broken socket no longer calls for <Say>.
HEARD = frozenset({Phase.PROMPTING, Phase.AWAITING_KEY, Phase.WITH_AGENT, Phase.SAYING_GOODBYE})
MENU = frozenset({Phase.SPEAKING, Phase.PROMPTING, Phase.AWAITING_KEY})  # where keys do what the menu says
# where our own speech plays
SPEAKS = frozenset({Phase.SPEAKING, Phase.PROMPTING, Phase.SAYING_GOODBYE, Phase.LEAVING_VOICEMAIL})
WAITING = frozenset({Phase.LISTENING_FOR_HELLO, Phase.HOLDING_FOR_AMD})  # the message waits for the callee
# Where a machine's verdict still changes the call: its outcome is not decided yet (a prompt plays, or the
# key window runs, to a machine as well as to a person).
UNDECIDED = frozenset({*WAITING, Phase.SPEAKING, Phase.PROMPTING, Phase.AWAITING_KEY})


class Choice(StrEnum):
    """What a key does; a call's menu maps its digits to these."""

    CONFIRM = "confirm"
    OPT_OUT = "opt_out"
    DECLINE = "decline"
    SNOOZE = "snooze"
    REPEAT = "repeat"
    AGENT = "agent"


@dataclass(frozen=True)
class CallScript:
    """After the message: a prompt, and how long to wait for a key once it has played (real seconds)."""

    prompt: str | None  # None: no confirmation asked; the call ends when the message has played
    repeat_keys: frozenset[str] = frozenset({REPEAT_KEY})
    window_s: float = WINDOW_S
    decline_key: str | None = None  # a reminder's "cancel" (2), a page's "escalate now" (3)
    # What the confirm and decline keys do, in the outcome's reason ("pressed 2 to cancel")
    confirms: str = "confirm"
    declines: str = "cancel"
    snooze_key: str | None = None  # a reminder's "call me again later" (3)
    # 9 opts the number out of every call. Not a page's: an on-call pager that opted out of its own pages
    # would silently drop out of every escalation (a slipped finger at 3 a.m. included).
    opt_out: bool = True
    agent: AgentOffer | None = None  # hand the call to the agent after the message, or on a key


@dataclass(frozen=True, slots=True)
class Setup:
    """What the admitted stream's grant, and the service's configuration, say about the call."""

    call_id: int
    kind: str  # a CallKind
    text: str
    offer: AgentOffer | None = None  # the grant's own: After.START hands the call over at once
    line_offer: AgentOffer | None = None  # the greeting line's (an announcement's is in its script)
    agent: bool = False  # an agent is configured (without one a hand-over is an apology)
    script: bool = False  # a script is being loaded (announcements); keys and the end mark wait for it
    apology: str = APOLOGY  # said when the agent cannot be reached, or fails
    time_limit: str = TIME_LIMIT  # said when the conversation reached its longest
    # Who answered (an announcement's options): listen for the callee's hello before the message...
    listen: bool = False
    listen_s: float = 3.0  # ... at most this long should no audio of theirs arrive (a backstop)
    amd: bool = False  # Twilio's machine detection was asked for: a long greeting waits for its verdict
    hold_s: float = 35.0  # the longest wait for that verdict (Twilio's detection timeout and a margin)
    voicemail: str | None = None  # what a machine is told (None: the message itself)
    hang_up_on_machine: bool = False  # on_machine: hang_up


@dataclass(frozen=True, slots=True)
class Ending:
    """How the call ends once its deadline passes or its last words have played."""

    outcome: CallOutcome | None  # None: recorded already (the agent took the call)
    why: str


# --- events in ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamStarted:
    setup: Setup


@dataclass(frozen=True, slots=True)
class MarkEchoed:
    name: str  # `<prefix><call id>.<round>`, or the agent's `agent:...`


@dataclass(frozen=True, slots=True)
class KeyPressed:
    digit: str


@dataclass(frozen=True, slots=True)
class ScriptLoaded:
    script: CallScript | None  # None: none, or it could not be loaded (the call goes on without one)


@dataclass(frozen=True, slots=True)
class AgentConnected:
    conversation_id: str


@dataclass(frozen=True, slots=True)
class AgentEnded:
    end: AgentEnd


@dataclass(frozen=True, slots=True)
class DeadlinePassed:
    timer: int  # StartDeadline's


class Hearing(StrEnum):
    """What the session's ear heard of the callee while the message waits (telephony/hello.py)."""

    HELLO_ENDED = "hello_ended"  # an utterance ended (a short one: their hello)
    SILENCE = "silence"  # nothing said for hello_timeout_ms
    LONG_SPEECH = "long_speech"  # an utterance reached the speech threshold: a greeting in the making
    TONE = "tone"  # a steady tone: a fax's, or a machine's beep (machine detection will name it)
    SPEECH_STARTED = "speech_started"  # the first utterance began: the ear decides from here on


@dataclass(frozen=True, slots=True)
class CalleeHeard:
    hearing: Hearing
    speech_ms: int = 0  # how long the utterance was (so far)


@dataclass(frozen=True, slots=True)
class MachineVerdict:
    """Twilio's asynchronous machine detection verdict (`AnsweredBy`, `MachineDetectionDuration`)."""

    answered_by: str
    amd_ms: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStopped:
    """Twilio's `stop`: the caller hung up."""


@dataclass(frozen=True, slots=True)
class SocketClosed:
    """The media socket is gone (with or without `stop`): the session is finishing."""

    reason: str


@dataclass(frozen=True, slots=True)
class SpeechFailed:
    """No audio could be made at all (TTS down before the first frame)."""

    reason: str


@dataclass(frozen=True, slots=True)
class SaidByTwilio:
    """Twilio accepted RedirectToSay: the rest of the call is its <Say>."""

    reason: str


@dataclass(frozen=True, slots=True)
class TokenRefused:
    """The database says another stream used this call's token first: that stream owns the call."""


Event = (
    StreamStarted
    | MarkEchoed
    | KeyPressed
    | ScriptLoaded
    | AgentConnected
    | AgentEnded
    | DeadlinePassed
    | StreamStopped
    | SocketClosed
    | SpeechFailed
    | SaidByTwilio
    | TokenRefused
    | CalleeHeard
    | MachineVerdict
)

# --- actions out --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Speak:
    """Speak `text`, then send `mark` (its echo says it played to the end)."""

    text: str
    mark: str


@dataclass(frozen=True, slots=True)
class StopSpeaking:
    """Stop sending what is being spoken (whatever Twilio has buffered still plays: see Clear)."""


@dataclass(frozen=True, slots=True)
class Clear:
    """Send `clear`: Twilio drops what it has buffered and echoes its pending marks at once."""


@dataclass(frozen=True, slots=True)
class SendMark:
    name: str


@dataclass(frozen=True, slots=True)
class StartDeadline:
    """Feed DeadlinePassed(timer) `seconds` (sandbox seconds) from now; replaces a running one."""

    timer: int
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelDeadline:
    pass


@dataclass(frozen=True, slots=True)
class HandOver:
    offer: AgentOffer
    heard_text: str  # what the caller heard before the agent ("" when the agent starts the call)


@dataclass(frozen=True, slots=True)
class CloseAgent:
    reason: str


@dataclass(frozen=True, slots=True)
class ForwardMark:
    """An echoed `agent:` mark, for the agent (how much of its turn has played)."""

    name: str


@dataclass(frozen=True, slots=True)
class AwaitVerdict:
    """Look for the verdict in the store while the call holds: Twilio may post it to another process."""


@dataclass(frozen=True, slots=True)
class AwaitScript:
    """Feed ScriptLoaded once the call's script is in; the events that needed it wait in the state."""


@dataclass(frozen=True, slots=True)
class RedirectToSay:
    """Ask Twilio to speak `text` itself (REST update to <Say>); feed SaidByTwilio if it did."""

    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class Record:
    kind: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """The call's outcome: on its record (with `why`), and told to the dispatcher (with `told`)."""

    outcome: CallOutcome
    why: str
    told: str | None = None  # None: `why`


@dataclass(frozen=True, slots=True)
class Played:
    """How much of the message (or the voicemail message) has played: `ms`, or all of it (None)."""

    ms: int | None


@dataclass(frozen=True, slots=True)
class HangUp:
    """End the call through REST (`Status=completed`; an already ended call is fine)."""


@dataclass(frozen=True, slots=True)
class CloseSocket:
    reason: str
    refused: bool = False  # a policy violation (not our call), not a normal close


Action = (
    Speak
    | StopSpeaking
    | Clear
    | SendMark
    | StartDeadline
    | CancelDeadline
    | HandOver
    | CloseAgent
    | ForwardMark
    | AwaitScript
    | AwaitVerdict
    | RedirectToSay
    | Record
    | ReportOutcome
    | Played
    | HangUp
    | CloseSocket
)

# --- the state ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallState:
    phase: Phase = Phase.CONNECTING
    setup: Setup | None = None
    round: int = 0  # bumped by every `clear` we send
    script: CallScript | None = None
    script_known: bool = True  # False while an announcement's script is being loaded
    menu: Mapping[str, Choice] = field(default_factory=dict)
    pending: tuple[Event, ...] = ()  # events that wait for the script
    timer: int = 0  # the last deadline started
    armed: bool = False  # that deadline is running
    ending: Ending | None = None  # what the deadline, or the goodbye's mark, ends the call with
    handed_over: bool = False  # an agent was given the call
    heard_before_agent: bool = False  # the caller heard the message before the agent (or its apology)
    answered_by: str | None = None  # machine detection's verdict, once it came

    @property
    def heard(self) -> bool:
        return self.phase in HEARD

    def mark(self, prefix: str) -> str:
        assert self.setup is not None
        return f"{prefix}{self.setup.call_id}.{self.round}"


def menu_for(setup: Setup, script: CallScript | None) -> dict[str, Choice]:
    """Which digit does what on this call: an alert's (repeat, opt out, and confirm when it asks), a
    reminder's (confirm, cancel, later, opt out, its own repeat key), a page's (acknowledge, repeat,
    escalate; no opt-out), the greeting line's (none), and the agent's key on any of them. Filled from the
    least to the most binding: a later entry wins a digit."""
    keys: dict[str, Choice] = {}
    if setup.kind == CallKind.ANNOUNCEMENT:
        asks = script is not None and script.prompt is not None
        keys.update(dict.fromkeys(script.repeat_keys if script is not None else (REPEAT_KEY,), Choice.REPEAT))
        if asks and script is not None:
            if script.snooze_key is not None:
                keys[script.snooze_key] = Choice.SNOOZE
            if script.decline_key is not None:
                keys[script.decline_key] = Choice.DECLINE
        if script is None or script.opt_out:
            keys[OPT_OUT_KEY] = Choice.OPT_OUT
        if asks:
            keys[CONFIRM_KEY] = Choice.CONFIRM
    offer = _offer(setup, script)
    if offer is not None and offer.after == After.KEY:
        keys[offer.key] = Choice.AGENT
    return keys


def _offer(setup: Setup, script: CallScript | None) -> AgentOffer | None:
    """The agent offered after the message or on a key (None without an agent)."""
    if not setup.agent:
        return None
    return script.agent if script is not None and script.agent is not None else setup.line_offer


Step = tuple[CallState, list[Action]]


def step(call: CallState, event: Event) -> Step:
    """The call's next state and what to do, for one event. Pure: the same input gives the same output."""
    match event:
        case MarkEchoed(name):
            return _mark(call, name, event)
        case KeyPressed(digit):
            return _key(call, digit, event)
        case StreamStarted(setup):
            return _started(call, setup)
        case ScriptLoaded(script):
            return _script_loaded(call, script)
        case AgentConnected(conversation_id):
            # Also once the call has ended: the caller may hang up while the agent is taking the call.
            if not call.handed_over or call.phase not in (Phase.WITH_AGENT, Phase.ENDED):
                return call, []
            why = f"handed to the agent (conversation {conversation_id[:64]})"
            return call, [ReportOutcome(CallOutcome.AGENT, why)]
        case AgentEnded(end):
            return _agent_ended(call, end)
        case DeadlinePassed(timer):
            if not call.armed or timer != call.timer:
                return call, []
            if call.phase == Phase.LISTENING_FOR_HELLO:
                return _begin(replace(call, armed=False), "no audio from the callee in time")
            if call.phase == Phase.HOLDING_FOR_AMD:
                return _begin(replace(call, armed=False), "no verdict from machine detection in time")
            if call.ending is None:
                return call, []
            return _end(replace(call, armed=False), call.ending.outcome, call.ending.why)
        case CalleeHeard(hearing, speech_ms):
            return _heard(call, hearing, speech_ms)
        case MachineVerdict(answered_by):
            return _verdict(call, answered_by)
        case StreamStopped():
            return _stopped(call)
        case SocketClosed(reason):
            return _closed(call, reason)
        case SpeechFailed(reason):
            if call.phase not in SPEAKS:
                return call, []
            return call, _redirect(call, reason)
        case SaidByTwilio(reason):
            if call.setup is None:
                return call, []
            # The rest of the call is Twilio's <Say>: no hang-up of ours (it hangs up after speaking).
            call, actions = _leave(call, "the call was given to Twilio <Say>", speaking=False)
            told = f"spoken by Twilio <Say>: {reason}"
            return call, [*actions, ReportOutcome(CallOutcome.SAID_BY_TWILIO, reason, told)]
        case TokenRefused():
            if call.setup is None:
                return call, []
            # Not ours to end: no outcome and no hang-up; the stream that used the token first owns the call.
            call, actions = _leave(call, "stream token already used")
            closing = CloseSocket("stream token already used", refused=True)
            return call, [Record("stream_token_reused"), *actions, closing]
        case _:
            assert_never(event)


# --- the events, one by one -----------------------------------------------------------------------------


def _started(call: CallState, setup: Setup) -> Step:
    if call.phase != Phase.CONNECTING:
        return call, []
    call = CallState(
        phase=Phase.SPEAKING,
        setup=setup,
        script_known=not setup.script,
        menu={} if setup.script else menu_for(setup, None),
    )
    if setup.offer is not None and setup.offer.after == After.START:
        return _hand_over(call, setup.offer, heard=False, actions=[])  # POST /outbound-call
    if setup.listen:
        call = replace(call, phase=Phase.LISTENING_FOR_HELLO, timer=1, armed=True)
        return call, [StartDeadline(1, setup.listen_s)]
    return call, [Speak(setup.text, call.mark(END_MARK_PREFIX))]


def _begin(call: CallState, why: str) -> Step:
    """The callee's hello is over (or never came, or a person was named): the message starts."""
    setup = call.setup
    assert setup is not None
    actions: list[Action] = [CancelDeadline()] if call.armed else []
    call = replace(call, phase=Phase.SPEAKING, armed=False)
    return call, [
        *actions,
        Speak(setup.text, call.mark(END_MARK_PREFIX)),
        Record("message_started", {"after": why}),
    ]


def _heard(call: CallState, hearing: Hearing, speech_ms: int) -> Step:
    if call.phase != Phase.LISTENING_FOR_HELLO:
        return call, []  # holding: only the verdict (or its deadline) moves the call on
    assert call.setup is not None
    match hearing:
        case Hearing.HELLO_ENDED:
            return _begin(call, f"the callee's hello ({speech_ms} ms)")
        case Hearing.SILENCE:
            return _begin(call, "silence: no hello")
        case Hearing.LONG_SPEECH:
            if not call.setup.amd:
                return call, []  # no verdict will come: the message starts when the speech ends
            return _hold(call, f"speech of {speech_ms} ms")
        case Hearing.SPEECH_STARTED:
            # The backstop is for audio that never comes; from here the utterance's end (or its length)
            # decides, however long it takes.
            return (replace(call, armed=False), [CancelDeadline()]) if call.armed else (call, [])
        case Hearing.TONE:
            if not call.setup.amd:
                return call, []  # no verdict will come: the silence (or a hello) starts the message
            return _hold(call, "a steady tone")
        case _:
            assert_never(hearing)


def _hold(call: CallState, why: str) -> Step:
    setup = call.setup
    assert setup is not None
    timer = call.timer + 1
    call = replace(call, phase=Phase.HOLDING_FOR_AMD, timer=timer, armed=True)
    actions: list[Action] = [StartDeadline(timer, setup.hold_s), Record("holding_for_amd", {"after": why})]
    return call, [*actions, AwaitVerdict()]


def _verdict(call: CallState, answered_by: str) -> Step:
    """Machine detection's verdict. The first final one is the call's (`machine_start` is not final: the
    greeting's end is still to be reported); the endings take no notice of it."""
    setup = call.setup
    if setup is None or call.phase == Phase.ENDED or call.answered_by is not None:
        return call, []
    if answered_by == AnsweredBy.MACHINE_START:
        if call.phase != Phase.LISTENING_FOR_HELLO:
            return call, []
        return _hold(call, "machine detection heard a machine start")
    call = replace(call, answered_by=answered_by)
    if call.phase not in UNDECIDED:
        return call, []  # with the agent, or saying goodbye: noted only
    if answered_by == AnsweredBy.FAX:
        return _end(call, CallOutcome.FAX, "a fax machine answered")
    if answered_by in MACHINE_ENDS:
        if setup.hang_up_on_machine:
            return _end(
                call, CallOutcome.MACHINE, f"an answering machine ({answered_by}): on_machine is hang_up"
            )
        return _leave_voicemail(call)
    if call.phase in WAITING and answered_by in (AnsweredBy.HUMAN, AnsweredBy.UNKNOWN):
        return _begin(call, f"machine detection said {answered_by}")
    return call, []


def _leave_voicemail(call: CallState) -> Step:
    """Stop whatever plays (Twilio drops its buffer) and speak the voicemail message from its first word."""
    setup = call.setup
    assert setup is not None
    if call.phase in WAITING:
        actions: list[Action] = [CancelDeadline()] if call.armed else []
        call = replace(call, armed=False)
    else:
        call, actions = _silence(call)
    call = replace(call, phase=Phase.LEAVING_VOICEMAIL, ending=None)
    text = setup.voicemail if setup.voicemail is not None else setup.text
    return call, [*actions, Speak(text, call.mark(VOICEMAIL_MARK_PREFIX))]


def _mark(call: CallState, name: str, event: MarkEchoed) -> Step:
    phase = call.phase
    if phase == Phase.CONNECTING or phase == Phase.ENDED:
        return call, []
    if name.startswith(AGENT_MARK_PREFIX):
        return call, [ForwardMark(name)] if phase == Phase.WITH_AGENT else []
    if name.startswith(PLAYED_MARK_PREFIX):
        return _progress(call, name)
    if not name.endswith(f".{call.round}"):
        return call, [Record("mark_cleared", {"mark": name[:64]})]  # flushed by our `clear`, not played
    if phase == Phase.SPEAKING and name.startswith(END_MARK_PREFIX):
        if not call.script_known:
            return _wait_for_script(call, event)
        return _message_played(call)
    if phase == Phase.PROMPTING and name.startswith(PROMPT_MARK_PREFIX):
        if not call.script_known:
            return _wait_for_script(call, event)
        return _await_key(call, call.script.window_s if call.script is not None else 0.0)
    if phase == Phase.SAYING_GOODBYE and name.startswith(BYE_MARK_PREFIX) and call.ending is not None:
        return _end(call, call.ending.outcome, call.ending.why)
    if phase == Phase.LEAVING_VOICEMAIL and name.startswith(VOICEMAIL_MARK_PREFIX):
        after = (
            "after the beep"
            if call.answered_by == AnsweredBy.MACHINE_END_BEEP
            else "after the greeting (no beep heard)"
        )
        call, actions = _end(call, CallOutcome.VOICEMAIL_LEFT, f"the whole message was left {after}")
        return call, [Played(None), *actions]
    return call, []


def _progress(call: CallState, name: str) -> Step:
    """A progress mark of the message or the voicemail message: this round's, while it plays."""
    if call.phase not in (Phase.SPEAKING, Phase.LEAVING_VOICEMAIL) or not name.endswith(f".{call.round}"):
        return call, []
    ms = name[len(PLAYED_MARK_PREFIX) :].split(":", 1)[0]
    return call, [Played(int(ms))] if ms.isascii() and ms.isdigit() and len(ms) <= 9 else []


def _message_played(call: CallState) -> Step:
    """The message's end mark came back: it was heard. Then the agent, the prompt, or the end."""
    assert call.setup is not None
    call, actions = _message_over(call)
    return call, [Played(None), *actions]


def _message_over(call: CallState) -> Step:
    assert call.setup is not None
    script = call.script
    offer = _offer(call.setup, script)
    if offer is not None and offer.after == After.ANNOUNCEMENT:
        return _hand_over(call, offer, heard=True, actions=[])
    if script is None or script.prompt is None:
        if offer is not None and offer.after == After.KEY:
            # No prompt: the offer is in the message itself; wait for its key as for a prompt's.
            return _await_key(call, script.window_s if script is not None else WINDOW_S)
        return _end(call, CallOutcome.HEARD, "end mark echoed: the message played to the end")
    return replace(call, phase=Phase.PROMPTING), [Speak(script.prompt, call.mark(PROMPT_MARK_PREFIX))]


def _key(call: CallState, digit: str, event: KeyPressed) -> Step:
    """One switch over this call's menu. Keys mean nothing before the start, to the agent's caller (they
    are the agent's business), while the call says goodbye, and after the end."""
    if call.phase in WAITING:
        return _begin(call, f"key {digit}: a person")  # a machine presses no keys
    if call.phase not in MENU:
        return call, []
    if not call.script_known:
        return _wait_for_script(call, event)
    setup = call.setup
    assert setup is not None
    match call.menu.get(digit):
        case Choice.CONFIRM:
            confirms = call.script.confirms if call.script is not None else "confirm"
            return _end(call, CallOutcome.CONFIRMED, f"pressed {digit} to {confirms}")
        case Choice.OPT_OUT:
            return _end(call, CallOutcome.OPTED_OUT, f"pressed {digit}: do not call this number again")
        case Choice.DECLINE:
            declines = call.script.declines if call.script is not None else "cancel"
            return _end(call, CallOutcome.DECLINED, f"pressed {digit} to {declines}")
        case Choice.SNOOZE:
            return _end(call, CallOutcome.SNOOZED, f"pressed {digit} to be called again later")
        case Choice.REPEAT:
            # Stop what is playing (Twilio drops its buffer on `clear`) and start the message over.
            call, actions = _silence(call)
            actions += [Record("repeat", {"digit": digit}), Speak(setup.text, call.mark(END_MARK_PREFIX))]
            return replace(call, phase=Phase.SPEAKING), actions
        case Choice.AGENT:
            offer = _offer(setup, call.script)
            assert offer is not None
            call, actions = _silence(call)
            return _hand_over(call, offer, heard=True, actions=actions)
        case None:
            return call, []


def _script_loaded(call: CallState, script: CallScript | None) -> Step:
    if call.setup is None:
        return call, []
    pending = call.pending
    call = replace(call, script=script, script_known=True, menu=menu_for(call.setup, script), pending=())
    actions: list[Action] = []
    for event in pending:
        call, more = step(call, event)
        actions += more
    return call, actions


def _agent_ended(call: CallState, end: AgentEnd) -> Step:
    """The conversation is over: hang up once the agent's last words have played, or apologise first."""
    if call.phase != Phase.WITH_AGENT:
        return call, []
    # None: recorded when the agent took the call. Else the message before it (if any) was heard, and only
    # the conversation failed.
    outcome = None if end.connected else _outcome_without_agent(call)
    ending = Ending(outcome, end.reason)
    call = replace(call, phase=Phase.SAYING_GOODBYE, ending=ending)
    if end.kind == EndKind.AGENT_ENDED:
        # The agent said goodbye: hang up when its last words have played (the mark's echo), or after the
        # grace should the echo never come (never left open).
        timer = call.timer + 1
        call = replace(call, timer=timer, armed=True)
        return call, [SendMark(call.mark(BYE_MARK_PREFIX)), StartDeadline(timer, BYE_GRACE_S)]
    actions: list[Action] = []
    if end.connected:
        call, actions = _silence(call)  # whatever the agent left in Twilio's buffer
    assert call.setup is not None
    text = call.setup.time_limit if end.kind == EndKind.TIME_LIMIT else call.setup.apology
    return call, [*actions, Speak(text, call.mark(BYE_MARK_PREFIX))]


def _stopped(call: CallState) -> Step:
    """Twilio's `stop`: the caller hung up. The agent's socket first (no orphaned agent sessions), then
    answer Twilio's close while its side is still open; the REST hang-up comes after."""
    if call.phase == Phase.CONNECTING:
        return call, []
    closing = CloseSocket("stream stopped")
    if call.phase == Phase.ENDED:
        return call, [closing]
    ended, actions = _leave(call, "the caller hung up")
    actions.append(closing)
    if not call.heard:
        actions += [_hung_up(call), HangUp()]
    # Else heard (or with the agent, whose outcome was recorded when it took the call): nothing to record.
    return ended, actions


def _hung_up(call: CallState) -> ReportOutcome:
    """The outcome of a call the other end hung up before the message (or the voicemail) was over."""
    match call.phase:
        case Phase.LISTENING_FOR_HELLO:
            return ReportOutcome(CallOutcome.HUNG_UP_EARLY, "stream stopped before the message started")
        case Phase.HOLDING_FOR_AMD:
            # What Twilio's verdict says of such a call too (machine_end_other): a greeting longer than
            # its speech threshold, then the line closed (a full mailbox).
            why = "hung up after a greeting longer than the speech threshold: a machine, no message left"
            return ReportOutcome(CallOutcome.MACHINE, why)
        case Phase.LEAVING_VOICEMAIL:
            return ReportOutcome(
                CallOutcome.MACHINE, "the machine hung up before the voicemail message ended"
            )
        case _:
            return ReportOutcome(CallOutcome.HUNG_UP_EARLY, "stream stopped before the message ended")


def _closed(call: CallState, reason: str) -> Step:
    if call.phase == Phase.CONNECTING or call.phase == Phase.ENDED:
        return replace(call, phase=Phase.ENDED), []
    ended, actions = _leave(call, reason)
    if not call.heard:
        # The socket broke without `stop` (a hang-up sends `stop`) or the end mark: the caller may still
        # be there, so Twilio speaks the message instead (design: never silent).
        actions += _redirect(call, reason)
    return ended, actions


# --- what several events do ---------------------------------------------------------------------------


def _end(call: CallState, outcome: CallOutcome | None, why: str) -> Step:
    """Record `outcome` (None: recorded already), then hang up. Every hang-up of ours but a `stop`'s comes
    through here."""
    call, actions = _leave(call, "the call is ending")
    if outcome is not None:
        actions.append(ReportOutcome(outcome, why))
    else:
        actions.append(Record("call_ending", {"reason": why[:200]}))
    return call, [*actions, HangUp(), CloseSocket("call ended")]


def _leave(call: CallState, agent_reason: str, *, speaking: bool = True) -> Step:
    """From a live phase into ENDED: nothing of the call goes on (the agent, our speech, the deadline).
    Every way there comes through here."""
    if call.phase == Phase.ENDED:
        return call, []
    actions: list[Action] = [CloseAgent(agent_reason)] if call.phase == Phase.WITH_AGENT else []
    if speaking:
        actions.append(StopSpeaking())
    if call.armed:
        actions.append(CancelDeadline())
    return replace(call, phase=Phase.ENDED, armed=False), actions


def _silence(call: CallState) -> Step:
    """Stop what plays (ours, and what Twilio buffered) and start a new round of marks."""
    actions: list[Action] = [CancelDeadline()] if call.armed else []
    actions += [StopSpeaking(), Clear()]
    return replace(call, round=call.round + 1, armed=False), actions


def _hand_over(call: CallState, offer: AgentOffer, *, heard: bool, actions: list[Action]) -> Step:
    """From here a broken stream no longer means the message went unheard."""
    setup = call.setup
    assert setup is not None
    call = replace(call, heard_before_agent=heard)
    if not setup.agent:
        ending = Ending(_outcome_without_agent(call), "agent mode is not configured")
        call = replace(call, phase=Phase.SAYING_GOODBYE, ending=ending)
        return call, [*actions, Speak(setup.apology, call.mark(BYE_MARK_PREFIX))]
    call = replace(call, phase=Phase.WITH_AGENT, handed_over=True)
    handing = HandOver(offer, setup.text if heard else "")
    return call, [*actions, Record("agent_handoff", {"after": offer.after.value}), handing]


def _await_key(call: CallState, seconds: float) -> Step:
    """The key window is a span of time by definition: no key in it, and the message counts as heard."""
    timer = call.timer + 1
    ending = Ending(CallOutcome.HEARD, "the message and the prompt played; no key pressed")
    call = replace(call, phase=Phase.AWAITING_KEY, timer=timer, armed=True, ending=ending)
    return call, [StartDeadline(timer, seconds)]


def _redirect(call: CallState, reason: str) -> list[Action]:
    """TTS failed before any audio, or the socket broke: let Twilio speak the message (never silent)."""
    setup = call.setup
    assert setup is not None
    voicemail = call.phase == Phase.LEAVING_VOICEMAIL and setup.voicemail is not None
    text = setup.voicemail if voicemail and setup.voicemail is not None else setup.text
    return [Record("speech_redirect_to_say", {"reason": reason}), RedirectToSay(text, reason)]


def _wait_for_script(call: CallState, event: Event) -> Step:
    return replace(call, pending=(*call.pending, event)), [AwaitScript()]


def _outcome_without_agent(call: CallState) -> CallOutcome:
    return CallOutcome.HEARD if call.heard_before_agent else CallOutcome.FAILED
