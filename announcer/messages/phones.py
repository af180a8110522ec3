"""Phone numbers in, E.164 out (`phonenumbers`, Google's libphonenumber port): one form in the database,
so "+1 (555) 010-0000" and "+15550100000" are the same recipient and the same opt-out."""

from __future__ import annotations

import phonenumbers


class BadNumber(ValueError):
    """Why a number cannot be dialed, in words for an API error."""


def to_e164(number: str, region: str | None = None, *, strict: bool = True) -> str:
    """Normalise `number`; without a `region` it must be in international form (+...).

    `strict=False` (sandbox mode) accepts any number of a possible length, so the fictional +1 555 01xx
    numbers work there; a real deployment dials only numbers valid for their country."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException as err:
        raise BadNumber(_PARSE_REASONS.get(err.error_type, "not a phone number")) from None
    if strict:
        if not phonenumbers.is_valid_number(parsed):  # implies a possible length: one check, not two
            raise BadNumber("not a valid phone number for its country")
    elif not phonenumbers.is_possible_number(parsed):
        raise BadNumber("not a possible phone number (wrong length)")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


_PARSE_REASONS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: (
        "no country: give the number in international form, starting with +"
    ),
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}
