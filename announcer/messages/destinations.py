"""Where calls may go: the destination policy, checked wherever a number to call enters (every recipient
of an alert, a schedule's fire and a preview in deliveries/plan.py; `POST /outbound-call`).

A call costs its caller, and some numbers pay their owner for each minute: toll fraud (IRSF) is making a
service ring numbers the fraudster is paid for, through a leaked API token or a sign-up form that feeds
it. Twilio's voice geographic permissions are the account's fence; this is the service's own, set by
the operator in settings (ANNOUNCER_ALLOWED_COUNTRIES, ANNOUNCER_ALLOWED_NUMBER_TYPES) and never
widened by a request. Emergency and short numbers are refused whatever the settings say: an automated
announcement must never tie up an emergency line.

Sandbox mode applies the same policy, so what the sandbox accepts a live deployment accepts; only
validity is looser there (a possible length suffices), for the fictional +1 555 01xx numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import phonenumbers
from phonenumbers import PhoneNumberType, shortnumberinfo

from announcer.config import Settings
from announcer.messages.phones import BadNumber, e164, parse

# Refused unless ANNOUNCER_ALLOWED_NUMBER_TYPES names them; the reason is the API's words. Allowed:
# fixed lines and mobiles; toll-free (the callee pays, nobody earns from the call); VoIP (ordinary
# numbers of people and offices on internet telephony, e.g. UK 056, DE 032); UNKNOWN, which only the
# sandbox's fictional numbers reach (a live deployment refuses a number that is not valid first).
REFUSED_BY_DEFAULT: Mapping[int, str] = MappingProxyType(
    {
        # Toll fraud's own target: the caller pays the number's owner per minute (US 900, UK 09, FR 089).
        PhoneNumberType.PREMIUM_RATE: "a premium-rate number (the caller pays its owner per minute)",
        # Billed above a normal call with part of it paid to the owner (FR 081/082, DE 0180): revenue share.
        PhoneNumberType.SHARED_COST: "a shared-cost number (dearer than a call, part paid to its owner)",
        # A company's one number routed anywhere at rates set per range: UK 03 costs a landline call, but
        # UK 055 ("corporate numbers") costs far more. People, whom announcements are for, do not have one.
        PhoneNumberType.UAN: "a universal access number (a company's number, charged at rates set per range)",
        # Forwarded anywhere at rates its owner sets; UK 070 numbers look like mobiles, and their misuse
        # made Ofcom cap their price.
        PhoneNumberType.PERSONAL_NUMBER: "a personal number (forwarded anywhere, at rates its owner sets)",
        # Nobody can hear an announcement on a pager, and the call may still be charged.
        PhoneNumberType.PAGER: "a pager number (nobody can hear an announcement there)",
        # A mailbox system's access number, not a person: the message would never be heard as meant.
        PhoneNumberType.VOICEMAIL: "a voicemail access number (a mailbox system, not a person)",
    }
)

NOT_A_COUNTRY = "001"  # phonenumbers' region of the international networks (+800, +870, +881, +882, ...)


@dataclass(frozen=True)
class DestinationPolicy:
    """Which numbers this deployment calls; `check` is the one gate a number to call passes."""

    region: str | None = None  # for numbers given without +country (ANNOUNCER_DEFAULT_REGION)
    # Live: a number must be valid for its country. Sandbox: a possible length suffices (fictional 555s).
    strict: bool = True
    countries: frozenset[str] = frozenset()  # ISO 3166 alpha-2; empty: every country
    refused_types: frozenset[int] = frozenset(REFUSED_BY_DEFAULT)

    @classmethod
    def from_settings(cls, settings: Settings) -> DestinationPolicy:
        allowed = {getattr(PhoneNumberType, name.upper()) for name in settings.announcer_allowed_number_types}
        return cls(
            region=settings.announcer_default_region,
            strict=not settings.twilio_sandbox,
            countries=settings.announcer_allowed_countries,
            refused_types=frozenset(REFUSED_BY_DEFAULT) - allowed,
        )

    def check(self, number: str) -> str:
        """`number` in E.164 if this deployment may call it; else BadNumber saying why not."""
        parsed = parse(number, self.region)
        # First, before validity: "112" is refused as what it is, not as a number of the wrong length.
        _refuse_short(parsed)
        if self.strict:
            if not phonenumbers.is_valid_number(parsed):  # implies a possible length: one check, not two
                raise BadNumber("not a valid phone number for its country")
        elif not phonenumbers.is_possible_number(parsed):
            raise BadNumber("not a possible phone number (wrong length)")
        if self.countries:
            self._check_country(parsed)
        if self.refused_types:
            kind = phonenumbers.number_type(parsed)
            if kind in self.refused_types:
                name = PhoneNumberType.to_string(kind).lower()
                setting = f"ANNOUNCER_ALLOWED_NUMBER_TYPES includes {name}"
                raise BadNumber(f"{REFUSED_BY_DEFAULT[kind]}: not called unless {setting}")
        return e164(parsed)

    def _check_country(self, parsed: phonenumbers.PhoneNumber) -> None:
        # A number valid for one region of a shared code (+1: the US, Canada, Jamaica, ...) is that
        # region's; a sandbox's fictional one (valid nowhere) is its code's main region (+1: US).
        code = parsed.country_code or 0  # always set by parse
        country = phonenumbers.region_code_for_number(parsed)
        country = country or phonenumbers.region_code_for_country_code(code)
        if country in self.countries:
            return
        allowed = ", ".join(sorted(self.countries))
        if country == NOT_A_COUNTRY:
            raise BadNumber(
                f"a number of an international network (+{code}), not of a country; "
                f"ANNOUNCER_ALLOWED_COUNTRIES allows {allowed}"
            )
        raise BadNumber(f"a number in {country} (+{code}); ANNOUNCER_ALLOWED_COUNTRIES allows {allowed}")


def _refuse_short(parsed: phonenumbers.PhoneNumber) -> None:
    """Emergency numbers and other short codes (911, 112, 999, 000, 110, 118 118 ...) as dialed in the
    number's own country: whatever the settings, never called."""
    # A length no short code of the country has (a US number's ten digits): nothing to look up. This
    # keeps the check off the path of nearly every number (the lookups try each region of +1 in turn).
    if not shortnumberinfo.is_possible_short_number(parsed):
        return
    digits = phonenumbers.national_significant_number(parsed)
    # Exact matches only: connects_to_emergency_number also matches prefixes, as digits dialed on a
    # phone would, and would refuse Paris landlines (+33 1 5x..: 15 is France's medical emergency).
    for region in phonenumbers.region_codes_for_country_code(parsed.country_code or 0):
        if shortnumberinfo.is_emergency_number(digits, region):
            raise BadNumber(f"an emergency number ({digits} in {region}): never called by this service")
    if shortnumberinfo.is_valid_short_number(parsed):
        raise BadNumber(f"a short code ({digits}), not a phone line: never called by this service")
