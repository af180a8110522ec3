"""ElevenLabs' reference example (shared/reference/elevenlabs-twilio-examples.txt), ported to Python for a
side-by-side measurement: on `start` it synthesizes the WHOLE clip with `convert`, then sends it as ONE
media message. Run by benchmarks/ttfa.py; reads ELEVENLABS_API_KEY, ELEVENLABS_BASE_URL, SERVER_WS, PORT.
"""

from __future__ import annotations

import base64
import json
import os

from aiohttp import web
from elevenlabs.client import AsyncElevenLabs
from twilio.twiml.voice_response import VoiceResponse

TEXT = "This is a test. You can now hang up. Thank you."


def build() -> web.Application:
    client = AsyncElevenLabs(
        api_key=os.environ["ELEVENLABS_API_KEY"], base_url=os.environ["ELEVENLABS_BASE_URL"]
    )
    text = os.environ.get("REFERENCE_TEXT", TEXT)

    async def incoming(_: web.Request) -> web.Response:
        twiml = VoiceResponse()
        twiml.connect().stream(url=os.environ["SERVER_WS"])
        return web.Response(text=str(twiml), content_type="text/xml")

    async def connection(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            message = json.loads(msg.data)
            if message.get("event") == "start":
                stream_sid = message["start"]["streamSid"]
                audio = b"".join(
                    [
                        chunk
                        async for chunk in client.text_to_speech.convert(
                            "21m00Tcm4TlvDq8ikWAM",
                            text=text,
                            model_id="eleven_flash_v2_5",
                            output_format="ulaw_8000",
                        )
                    ]
                )
                payload = base64.b64encode(audio).decode()
                await ws.send_str(
                    json.dumps({"streamSid": stream_sid, "event": "media", "media": {"payload": payload}})
                )
        return ws

    app = web.Application()
    app.router.add_post("/call/incoming", incoming)
    app.router.add_get("/call/connection", connection)
    return app


if __name__ == "__main__":
    web.run_app(build(), host="127.0.0.1", port=int(os.environ["PORT"]), print=None)
