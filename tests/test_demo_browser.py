"""``moviola demo`` in a real browser: headless Chromium (Debian's ``chromium`` package) driven by Playwright.

One server (``python -m moviola demo`` on a free port, with the shipped shapes-latte-t2v and shapes-walt-t2v) and
one browser for the module; each test loads the page afresh:

- a prompt, Generate: a ``<video>`` that Chromium decodes, whose file (fetched from the server) decodes to the
  asked frame count and size, with the settings the page sent;
- an uploaded first frame: frame 0 of the video matches it (PSNR >= 25 dB);
- an empty prompt: the message in the status box, no stack trace;
- "same seed, other model": a second video from the other model.

The page asks no host but the server for anything (every other request is refused and recorded). Skipped with
the reason when Playwright, Gradio or a Chromium is missing (``.ci/run`` installs them). Set
``MOVIOLA_DEMO_SCREENSHOT=docs/demo.png MOVIOLA_DEMO_STEPS=50`` to write the README's screenshot (default: under tmp, 4 steps).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moviola.data.shapes import render_clip
from moviola.video import read_video

# found, not imported: collecting this file imports neither into the test session
if importlib.util.find_spec("gradio") is None:
    pytest.skip("the demo needs gradio: pip install -e '.[demo]' (make test installs it)", allow_module_level=True)
if importlib.util.find_spec("playwright") is None:
    pytest.skip("needs playwright: pip install playwright (make test installs it)", allow_module_level=True)
CHROMIUM = os.environ.get("MOVIOLA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("no Chromium on this machine (apt-get install chromium; or set MOVIOLA_CHROMIUM to one)",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]

MODELS = ("shapes-latte-t2v", "shapes-walt-t2v")
PROMPT = "a red circle moving right"
STEPS = int(os.environ.get("MOVIOLA_DEMO_STEPS", "4"))  # the screenshot for the README: 50
# as root in a sandbox without a network: no sandbox, no GPU, nothing that calls home
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``moviola demo`` in its own process; its URL and output directory."""
    tmp = tmp_path_factory.mktemp("demo")
    out_dir, port = tmp / "out", free_port()
    log = open(tmp / "server.log", "w+")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "moviola", "demo", *(str(ROOT / "checkpoints" / m) for m in MODELS),
                             "--port", str(port), "--out-dir", str(out_dir), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120  # a fresh venv compiles torch and gradio on first import
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"moviola demo exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("moviola demo did not answer within 120 s")
            time.sleep(0.25)
        yield url, out_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Error as e:  # there, but it does not start: a fault to see, not a skip
            pytest.fail(f"Playwright cannot start {CHROMIUM}: {str(e).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    """The page, loaded; requests to any other host are refused and listed in ``page.elsewhere``."""
    url, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.elsewhere = []

    def only_the_server(route):
        if route.request.url.startswith(url) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            page.elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.goto(url)
    page.get_by_role("button", name="Generate").wait_for(timeout=30000)
    yield page
    context.close()


def set_prompt_and_steps(page, prompt: str, steps: int = STEPS) -> None:
    page.locator("#prompt textarea").fill(prompt)
    box = page.locator("#steps input[type=number]")
    box.fill(str(steps))
    box.press("Enter")


def wait_for_video(page, selector: str, other_than: str = "") -> str:
    """The src of the ``<video>`` under ``selector`` once Chromium has decoded its first frame."""
    video = page.locator(f"{selector} video")
    video.wait_for(timeout=60000)
    page.wait_for_function(
        """([sel, old]) => { const v = document.querySelector(sel + ' video');
            return v && v.src && v.src !== old && v.readyState >= 2 && v.videoWidth > 0; }""",
        arg=[selector, other_than], timeout=60000)
    state = video.evaluate("v => ({src: v.src, width: v.videoWidth, height: v.videoHeight, error: v.error && v.error.code})")
    assert state["error"] is None, state
    assert (state["width"], state["height"]) == (32, 32), state  # decoded by the browser itself
    return state["src"]


def fetch(page, src: str, tmp_path: Path) -> np.ndarray:
    response = page.request.get(src)
    assert response.ok, (src, response.status)
    path = tmp_path / Path(src.split("/")[-1]).name
    path.write_bytes(response.body())
    return read_video(path)


def status(page) -> str:
    return page.locator("#status textarea").input_value()


def last_generation(out_dir: Path) -> dict:
    return json.loads((out_dir / "generations.jsonl").read_text().splitlines()[-1])


def test_prompt_generate_and_play(page, server, tmp_path):
    _, out_dir = server
    set_prompt_and_steps(page, PROMPT)
    page.get_by_role("button", name="Generate").click()
    src = wait_for_video(page, "#result")
    assert src.endswith(".webm")
    frames = fetch(page, src, tmp_path)
    assert frames.shape == (17, 32, 32, 3)  # the asked (default) frame count and size
    page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('Made #')")
    made = last_generation(out_dir)
    assert (made["model"], made["prompt"], made["steps"], made["frames"]) == (MODELS[0], PROMPT, STEPS, 17)
    assert page.locator("#download").is_visible()
    assert page.elsewhere == []


def test_uploaded_first_frame_starts_the_video(page, server, tmp_path):
    image = tmp_path / "first.png"
    Image.fromarray(render_clip("green", "square", "down", size=32, frames=17)[0]).save(image)
    set_prompt_and_steps(page, "a green square moving down")
    page.locator("#first-frame input[type=file]").set_input_files(str(image))
    page.locator("#first-frame-preview img").wait_for(timeout=30000)  # read back by the server
    page.get_by_role("button", name="Generate").click()
    src = wait_for_video(page, "#result")
    frames = fetch(page, src, tmp_path)
    assert frames.shape == (17, 32, 32, 3)
    given = np.asarray(Image.open(image).convert("RGB"), dtype=np.float64)
    psnr = 10 * np.log10(255.0 ** 2 / np.mean((frames[0].astype(np.float64) - given) ** 2))
    assert psnr >= 25.0, psnr
    assert last_generation(server[1])["first frame"] == "first.png"


def test_empty_prompt_shows_the_message(page):
    set_prompt_and_steps(page, "")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => document.querySelector('#status textarea').value.includes('type a prompt')",
                           timeout=30000)
    assert status(page).startswith("Cannot generate: type a prompt: shapes-latte-t2v is a text-to-video model")
    assert "Traceback" not in page.content()
    assert page.locator("#result video").count() == 0  # nothing made


def test_same_seed_other_model_side_by_side(page, server, tmp_path):
    set_prompt_and_steps(page, "a blue triangle moving up")
    page.get_by_role("button", name="Generate").click()
    first = wait_for_video(page, "#result")
    page.get_by_role("button", name="Same seed, other model").click()
    second = wait_for_video(page, "#compare")
    assert second != first and MODELS[1] in second
    assert fetch(page, second, tmp_path).shape == (17, 32, 32, 3)
    page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('Compared #')")
    made = last_generation(server[1])
    assert (made["model"], made["prompt"], made["seed"], made["steps"]) == (MODELS[1], "a blue triangle moving up",
                                                                            0, STEPS)
    assert page.locator("#gallery video, #gallery img").count() >= 2
    shot = Path(os.environ.get("MOVIOLA_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    page.wait_for_timeout(500)  # the players reach a frame
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert page.elsewhere == []
