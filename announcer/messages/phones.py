"""Phone numbers in, E.164 out (`phonenumbers`, Google's libphonenumber port): one form in the database,
so "+1 (555) 010-0000" and "+15550100000" are the same recipient and the same opt-out.

Which numbers may be *called* is the destination policy's (messages/destinations.py); this module only
reads and normalises, for numbers that are never dialed (a caller's, an opt-out being removed)."""

from __future__ import annotations

import phonenumbers


class BadNumber(ValueError):
    """Why a number cannot be dialed, in words for an API error."""


def parse(number: str, region: str | None = None) -> phonenumbers.PhoneNumber:
    """`number` read; without a `region` it must be in international form (+...)."""
    try:
        return phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException as err:
        raise BadNumber(_PARSE_REASONS.get(err.error_type, "not a phone number")) from None


def e164(parsed: phonenumbers.PhoneNumber) -> str:
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def to_e164(number: str, region: str | None = None) -> str:
    """Normalise any number of a possible length (the sandbox's fictional +1 555 01xx ones too)."""
    parsed = parse(number, region)
    if not phonenumbers.is_possible_number(parsed):
        raise BadNumber("not a possible phone number (wrong length)")
    return e164(parsed)


_PARSE_REASONS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: (
        "no country: give the number in international form, starting with +"
    ),
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


def mask(number: str | None) -> str:
    """A phone number as logs show it: only its last 3 digits."""
    return "***" + number[-3:] if number and len(number) > 3 else "***"
