"""On acknowledgement, a silence for the incident's group at the Alertmanager that sent it
(`POST {externalURL}/api/v2/silences`), so the group stops notifying while someone works on it.

The URL came from a webhook body: it goes out under the same outbound policy as the outcome webhooks
(deliveries/egress.py: the URL judged, every resolved address judged at connect time, no proxy from the
environment). A failure is reported to the caller (who records it as an event), never raised: a silence
never holds an acknowledgement up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp

from announcer.deliveries.egress import EgressPolicy, GuardedResolver

CREATED_BY = "announcer"


@dataclass(frozen=True)
class SilenceResult:
    silence_id: str | None
    ends_at: str | None = None
    error: str | None = None


def silence_body(labels: Mapping[str, str], seconds: int, comment: str, now: datetime) -> dict[str, object]:
    """Alertmanager's PostableSilence for the group: one equality matcher per group label."""
    return {
        "matchers": [
            {"name": name, "value": value, "isRegex": False, "isEqual": True}
            for name, value in sorted(labels.items())
        ],
        "startsAt": now.isoformat().replace("+00:00", "Z"),
        "endsAt": (now + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z"),
        "createdBy": CREATED_BY,
        "comment": comment,
    }


class Silencer:
    def __init__(self, egress: EgressPolicy, timeout_s: float = 10.0) -> None:
        self._egress = egress
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = GuardedResolver(self._egress, aiohttp.DefaultResolver())
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver), trust_env=False
            )
        return self._session

    async def silence(
        self, external_url: str | None, labels: Mapping[str, str], seconds: int, comment: str
    ) -> SilenceResult:
        if not external_url:
            return SilenceResult(None, error="the webhook gave no externalURL")
        if not labels:
            return SilenceResult(None, error="the group has no labels to match")
        url = external_url.rstrip("/") + "/api/v2/silences"
        if (problem := self._egress.url_problem(url)) is not None:
            return SilenceResult(None, error=f"externalURL {problem}")
        body = silence_body(labels, seconds, comment, datetime.now(UTC))
        try:
            async with asyncio.timeout(self._timeout_s), self._http().post(url, json=body) as resp:
                if resp.status != 200:
                    return SilenceResult(None, error=f"Alertmanager answered {resp.status}")
                answer = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as err:
            return SilenceResult(None, error=f"{type(err).__name__}: {err}"[:300])
        silence_id = answer.get("silenceID") if isinstance(answer, dict) else None
        if not isinstance(silence_id, str):
            return SilenceResult(None, error="Alertmanager's answer had no silenceID")
        return SilenceResult(silence_id, ends_at=str(body["endsAt"]))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
