"""deploy/nginx-tls.conf as the README tells to install it: a real nginx terminating TLS in front of the
service, the media websocket upgraded through it, plain http sent on to https. A self-signed certificate
stands in for Let's Encrypt's; the ports are the test's own."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode

from announcer.telephony.media import MAX_BAD_MESSAGES
from tests.conftest import Service, eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
NGINX = shutil.which("nginx", path=SEARCH)
OPENSSL = shutil.which("openssl")

pytestmark = pytest.mark.skipif(
    NGINX is None or OPENSSL is None,
    reason="nginx or openssl is not installed (apt-get install nginx; .ci/run does)",
)


def tls_site(d: Path, upstream: int, plain: int, tls: int) -> str:
    """deploy/nginx-tls.conf with this test's ports and certificate; every other line as shipped."""
    text = (ROOT / "deploy" / "nginx-tls.conf").read_text()
    swaps = [
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};"),
        ("listen 80;", f"listen 127.0.0.1:{plain};"),
        ("listen [::]:80;", ""),
        ("listen 443 ssl;", f"listen 127.0.0.1:{tls} ssl;"),
        ("listen [::]:443 ssl;", ""),
        ("/etc/letsencrypt/live/alerts.example.com/fullchain.pem", str(d / "cert.pem")),
        ("/etc/letsencrypt/live/alerts.example.com/privkey.pem", str(d / "key.pem")),
        ("root /var/www/html;", f"root {d};"),
    ]
    for old, new in swaps:
        assert text.count(old) == 1, f"deploy/nginx-tls.conf: expected one {old!r}"
        text = text.replace(old, new)
    return text


async def run(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()


@pytest.fixture
async def nginx(service: Service, tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    d = tmp_path / "nginx"
    d.mkdir()
    assert OPENSSL is not None and NGINX is not None
    key, cert = str(d / "key.pem"), str(d / "cert.pem")
    await run(
        OPENSSL,
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=alerts.example.com",
        "-keyout",
        key,
        "-out",
        cert,
    )
    plain, tls = free_port(), free_port()
    (d / "site.conf").write_text(tls_site(d, service.settings.port, plain, tls))
    # As root, nginx's workers would run as `nobody`, who cannot enter the test's private directory.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    temp = " ".join(f"{k}_temp_path {d / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (d / "nginx.conf").write_text(
        f"{user}\ndaemon off;\nworker_processes 1;\npid {d / 'nginx.pid'};\n"
        f"error_log {d / 'error.log'} warn;\nevents {{}}\n"
        f"http {{ {temp} access_log off; include {d / 'site.conf'}; }}\n"
    )
    args = [NGINX, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]
    await run(*args, "-t")  # the configuration as nginx reads it
    proc = await asyncio.create_subprocess_exec(*args)
    try:

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", tls)
            except OSError:
                return False
            writer.close()
            return True

        await eventually(listening, timeout=15)
        yield plain, tls
    finally:
        proc.terminate()
        await proc.wait()


async def test_tls_in_front_of_the_service_and_its_media_websocket(
    service: Service, nginx: tuple[int, int]
) -> None:
    plain, tls = nginx
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # the test's self-signed certificate
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://127.0.0.1:{tls}/healthz", ssl=unverified) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with http.post(
            f"http://127.0.0.1:{plain}/twilio/voice?x=1",
            allow_redirects=False,
            headers={"Host": "alerts.example.com"},
        ) as resp:
            assert resp.status == 301
            assert resp.headers["Location"] == "https://alerts.example.com/twilio/voice?x=1"
        # the websocket upgrade goes through to the service, and its frames both ways: a stream that sends
        # nothing but malformed frames is closed by the service with "policy violation"
        async with http.ws_connect(f"wss://127.0.0.1:{tls}/twilio/media", ssl=unverified) as ws:
            for _ in range(MAX_BAD_MESSAGES + 1):
                await ws.send_bytes(b"not JSON")
            message = await ws.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.CLOSE and message.data == WSCloseCode.POLICY_VIOLATION


def test_the_tls_site_keeps_the_uri_as_twilio_signed_it() -> None:
    text = (ROOT / "deploy" / "nginx-tls.conf").read_text()
    # proxy_pass without a URI part and no rewrite: PUBLIC_URL + the path and query the signature covers
    assert re.findall(r"^\s*proxy_pass (\S+);", text, re.M) == ["http://announcer", "http://announcer"]
    assert not re.search(r"^\s*rewrite", text, re.M)
