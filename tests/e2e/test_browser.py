"""The demo page in headless Chromium, served by `uringws serve` with its sockets forced into short writes.

The page's integrity self-test sends 1 KiB..4 MiB messages on four connections to /echo and checks every byte;
the server's SO_SNDBUF is 4 KiB, so its large echoes complete short again and again. The test asserts on what
the page reports and writes a screenshot as an artifact.

Needs Debian's chromium (/usr/bin/chromium) and the `playwright` package (its driver only: no browser download).
CI installs both and sets URINGWS_REQUIRE_BROWSER=1, which turns a missing browser into a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..tools.test_torture import free_port, wait_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("URINGWS_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def _require_browser() -> None:
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append("chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if missing:
        msg = "browser test needs " + " and ".join(missing)
        if os.environ.get("URINGWS_REQUIRE_BROWSER"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))
    proc = subprocess.Popen([sys.executable, "-m", "uringws", "serve", "--port", str(port), "--sndbuf", "4096"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        print(out)
        assert proc.returncode == 0, f"uringws serve exited with {proc.returncode} on SIGTERM:\n{out}"


def test_demo_page_selftest_in_chromium(demo_server: int) -> None:
    _require_browser()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 1300})
            page = context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            page.goto(f"https://127.0.0.1:{demo_server}/#selftest")
            status = page.locator("#selftest-status")
            page.wait_for_function(
                "['passed', 'failed'].includes(document.getElementById('selftest-status').dataset.status)",
                timeout=180_000)
            page.wait_for_function("document.getElementById('chat-log').textContent.includes('connected')",
                                   timeout=30_000)
            page.fill("#chat-input", "hello from chromium")
            page.click("#chat-form button")
            page.wait_for_function("document.getElementById('chat-log').textContent.includes('hello from chromium')",
                                   timeout=30_000)
            page.wait_for_timeout(300)  # let the counters repaint for the screenshot
            page.screenshot(path=str(ARTIFACTS / "demo-selftest.png"), full_page=True)
            assert status.get_attribute("data-status") == "passed", (status.text_content(), console)
            assert status.get_attribute("data-passed") == "32"  # 8 sizes x 4 connections
            assert status.get_attribute("data-failed") == "0"
            assert int(page.locator("#bytes-in").text_content().replace(",", "")) > 4 * 5_000_000
            info = page.evaluate("fetch('/info').then(r => r.json())")
            if info["backend"] == "io_uring":
                # The point of the exercise: the server's sends really completed short, and nothing was lost.
                assert info["send_stats"]["short_sends"] + info["send_stats"]["direct_short"] > 0, info
            # The live panel shows the server's own numbers, polled from /info: what the server says, as it says.
            page.wait_for_function("document.getElementById('live-backend').textContent !== '–'", timeout=30_000)
            assert page.locator("#live-backend").text_content() == info["backend"]
            assert int(page.locator("#live-conns").text_content().replace(",", "")) >= 1  # the chat room
            pills = page.locator("#live-compiled .pill")
            assert pills.count() == len(info["compiled"]) > 0
            assert page.locator("#live-compiled .pill.on").count() == sum(info["compiled"].values())
            if info["backend"] == "io_uring":
                assert int(page.locator("#live-short").text_content().replace(",", "")) > 0
            # A burst of chat traffic shows as a point above zero on the messages/s chart.
            for i in range(20):
                page.fill("#chat-input", f"burst {i}")
                page.click("#chat-form button")
            page.wait_for_function("rates.some((p) => p.rate > 0)", timeout=30_000)
            page.wait_for_timeout(2500)  # a few more points, for the screenshot
            page.locator("section").first.screenshot(path=str(ARTIFACTS / "demo-live.png"))
        finally:
            browser.close()
