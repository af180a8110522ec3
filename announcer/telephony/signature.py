"""X-Twilio-Signature: proof that a webhook came from Twilio (protocols.md, "Authentication").

The signature is computed over the URL Twilio requested. Behind a proxy or tunnel that is not the
local socket's URL, so it is rebuilt from PUBLIC_URL plus the request's path and query.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping

from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from twilio.request_validator import RequestValidator

HEADER = "X-Twilio-Signature"


class SignatureChecker:
    def __init__(self, auth_token: str, public_url: str) -> None:
        self._validator = RequestValidator(auth_token)
        self._public_url = public_url.rstrip("/")

    def url_for(self, request: web.BaseRequest) -> str:
        return self._public_url + request.rel_url.path_qs

    def valid(self, url: str, params: Mapping[str, str] | MultiDictProxy[str], signature: str | None) -> bool:
        if not signature:
            return False
        # Twilio signs the URL it requested, which is ours as we gave it (PUBLIC_URL + path): one HMAC
        # over it settles nearly every webhook. The validator's own check (two HMACs, over the URL with and
        # without its port, after parsing it) is the fallback for a request to that URL written otherwise.
        computed = str(self._validator.compute_signature(url, params))
        # As bytes: any header text compares (a str with non-ASCII characters cannot).
        if hmac.compare_digest(computed.encode(), signature.encode("utf-8", "replace")):
            return True
        return bool(self._validator.validate(url, params, signature))

    async def verified_form(self, request: web.Request) -> MultiDictProxy[str]:
        """The POST form of a signed webhook; raises 403 when the signature is missing or wrong."""
        try:
            form = await request.post()
        except ValueError:  # UnicodeDecodeError among them: a body that is not UTF-8 form data
            # Nothing can be verified over fields that cannot be read; Twilio sends UTF-8.
            raise _refused(400, "malformed_body", "body", "not UTF-8 form data") from None
        # Twilio posts plain form fields; an uploaded file has no place in a webhook.
        fields = MultiDictProxy(MultiDict((k, v) for k, v in form.items() if isinstance(v, str)))
        if not self.valid(self.url_for(request), fields, request.headers.get(HEADER)):
            raise _refused(403, "invalid_signature", HEADER, "missing or does not match the request")
        for key, value in fields.items():
            if "\x00" in key or "\x00" in value:  # no text we store may hold one (PostgreSQL refuses it)
                raise _refused(400, "invalid_field", key.replace("\x00", "")[:64], "contains a NUL character")
        return fields


def _refused(status: int, code: str, field: str, reason: str) -> web.HTTPException:
    body = json.dumps({"error": code, "field": field, "reason": reason})
    if status == 403:
        return web.HTTPForbidden(text=body, content_type="application/json")
    return web.HTTPBadRequest(text=body, content_type="application/json")
