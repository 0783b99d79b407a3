"""A PNG of the served web viewer, taken in headless Chromium (for the docs; `apt-get install chromium`).

Chromium's `--screenshot` flag shoots as soon as the page has loaded, before the viewer's
WebAssembly has compiled and fetched the recording, so the page is driven over the DevTools
protocol instead: open, wait in real time, capture. WebGL comes from SwiftShader (software).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


async def _capture(debug_port: int, url: str, wait_s: float, width: int, height: int) -> bytes:
    import aiohttp  # present through `datasets`; only this docs helper needs it

    async with aiohttp.ClientSession() as session:
        targets = await _targets(session, debug_port)
        page = next(t for t in targets if t["type"] == "page")
        async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 1_000_000))

            async def call(method: str, **params: object) -> dict:
                mid = next(ids)
                await ws.send_json({"id": mid, "method": method, "params": params})
                async for message in ws:
                    reply = json.loads(message.data)
                    if reply.get("id") == mid:
                        return reply.get("result", {})
                raise RuntimeError("chromium closed the DevTools connection")

            await call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            await call("Page.navigate", url=url)
            await asyncio.sleep(wait_s)
            shot = await call("Page.captureScreenshot", format="png")
            return base64.b64decode(shot["data"])


async def _targets(session: object, port: int, timeout_s: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with session.get(f"http://127.0.0.1:{port}/json") as reply:  # type: ignore[attr-defined]
                return await reply.json()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def screenshot(
    url: str,
    out: Path,
    wait_s: float = 20.0,
    size: tuple[int, int] = (1600, 1000),
    chromium: str = "chromium",
    debug_port: int = 19222,
) -> Path:
    """Open `url` (e.g. the served web viewer) in headless Chromium and save a PNG to `out`."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]
        cmd += [
            "--remote-debugging-address=127.0.0.1",
            f"--remote-debugging-port={debug_port}",
            "about:blank",
        ]
        browser = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            png = asyncio.run(_capture(debug_port, url, wait_s, *size))
        finally:
            browser.terminate()
            browser.wait(10)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return out
