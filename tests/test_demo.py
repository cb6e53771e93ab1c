"""``moviola demo`` without a browser: the model logic (moviola/demo/core.py) checks what the page asks for and
writes its videos under the output directory only; the page's server (moviola/demo/app.py) sends no file from
outside it; the command binds to 127.0.0.1 unless told otherwise. The page in a real browser:
tests/test_demo_browser.py."""
from __future__ import annotations

import json
import socket
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moviola.cli import build_parser, main
from moviola.cli.demo import load_models, shipped_checkpoints
from moviola.data.shapes import render_clip
from moviola.demo.core import DemoError, Request, Studio, follow_progress, write_webm
from moviola.video import read_video

ROOT = Path(__file__).resolve().parents[1]
CKPTS = ROOT / "checkpoints"
T2V, DIFFUSERS, CLASS, WALT = "shapes-latte-t2v", "shapes-latte-t2v-diffusers", "shapes-latte-tiny", "shapes-walt-t2v"
PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def models():
    return load_models([str(CKPTS / n) for n in (T2V, DIFFUSERS, CLASS)], device="cpu")


@pytest.fixture()
def studio(models, tmp_path):
    return Studio(models, tmp_path / "out")


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


def first_frame_png(path: Path) -> Path:
    Image.fromarray(render_clip("red", "circle", "right", size=32, frames=17)[0]).save(path)
    return path


# ------------------------------------------------------------------ bad input: a message, nothing written


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt_for_a_text_model_is_a_message(studio, prompt):
    with pytest.raises(DemoError, match="type a prompt: shapes-latte-t2v is a text-to-video model") as e:
        studio.generate(Request(model=T2V, prompt=prompt, steps=2))
    assert "{red|green|blue|yellow}" in str(e.value)  # the vocabulary hint
    assert not files_under(studio.out_dir) and not studio.records


def test_an_image_it_cannot_read_is_a_message(studio, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    with pytest.raises(DemoError, match="cannot read broken.png as an image"):
        studio.generate(Request(model=T2V, prompt=PROMPT, image=str(bad), steps=2))
    with pytest.raises(DemoError, match="gone: upload it again"):
        studio.generate(Request(model=T2V, prompt=PROMPT, image=str(tmp_path / "missing.png"), steps=2))
    assert not files_under(studio.out_dir)


def test_frames_the_model_cannot_make_are_a_message(studio):
    with pytest.raises(DemoError, match="makes 17 frames in one clip: for 33 frames choose a long-video mode"):
        studio.generate(Request(model=T2V, prompt=PROMPT, frames=33, steps=2))  # no long mode
    with pytest.raises(DemoError, match=r"cannot make 16 frames: it makes 1 \+ 4k frames"):
        studio.generate(Request(model=T2V, prompt=PROMPT, frames=16, steps=2))  # the causal VAE's rule
    with pytest.raises(DemoError, match="frames must be 1 to 257"):
        studio.generate(Request(model=T2V, prompt=PROMPT, frames=0, steps=2))
    with pytest.raises(DemoError, match="takes no context frames"):
        studio.generate(Request(model=DIFFUSERS, prompt=PROMPT, frames=33, long="autoregressive", steps=2))
    assert not files_under(studio.out_dir)


def test_other_bad_settings_are_messages(studio, tmp_path):
    image = str(first_frame_png(tmp_path / "first.png"))
    cases = [
        (Request(model=DIFFUSERS, prompt=PROMPT, image=image), "does not take a first frame"),
        (Request(model=CLASS, prompt="a purple cow"), "class-conditional: type a {red"),
        (Request(model=T2V, prompt=PROMPT, steps=0), "steps must be 1 to 1000"),
        (Request(model=T2V, prompt=PROMPT, steps="x"), "steps must be a number"),
        (Request(model=T2V, prompt=PROMPT, cfg=float("nan")), "guidance must be a finite number"),
        (Request(model=T2V, prompt=PROMPT, sampler="euler"), "unknown sampler 'euler'"),
        (Request(model=T2V, prompt=PROMPT, seed=-1), "seed must be 0 to"),
        (Request(model=T2V, prompt="x" * 301), "keep it under 300"),
        (Request(model="nope", prompt=PROMPT), "no model 'nope' here"),
        (Request(model=T2V, prompt=PROMPT, frames=33, long="fifo", image=image), "fifo long videos take no first"),
    ]
    for request, message in cases:
        with pytest.raises(DemoError, match=message.replace("{", r"\{").replace("(", r"\(")):
            studio.generate(request)
    assert not files_under(studio.out_dir)


# ------------------------------------------------------------------ generating


def test_generate_writes_a_playable_video_under_the_output_directory_only(studio, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # nothing lands in the working directory either
    seen = []
    record = studio.generate(Request(model=T2V, prompt=PROMPT, steps=3, seed=7),
                             progress=lambda fraction, text: seen.append((fraction, text)))
    assert not any(work.iterdir())
    outside = files_under(tmp_path) - files_under(studio.out_dir)
    assert outside == set(), outside
    for name in (record.file, record.download):
        path = Path(name)
        assert path.parent == studio.videos
        assert read_video(path).shape == (17, 32, 32, 3)
    assert record.file.endswith(".webm") and record.download.endswith(".mp4")
    import av

    with av.open(record.file) as c:  # VP9 in WebM: what Chromium's open-source build plays
        assert c.streams.video[0].codec_context.name == "vp9"
    assert (record.frames, record.height, record.width, record.play_fps) == (17, 32, 32, 8.0)
    assert record.request.steps == 3 and record.request.cfg == 4.0 and record.request.sampler == "ddim"
    rows = [json.loads(line) for line in (studio.out_dir / "generations.jsonl").read_text().splitlines()]
    assert rows[-1]["prompt"] == PROMPT and rows[-1]["seed"] == 7 and rows[-1]["file"] == Path(record.file).name
    # the progress follows the sampler's steps, then says done
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("3/3 steps" in text for _, text in seen), seen
    assert studio.gallery() == [(record.thumbnail, record.caption())]
    assert Path(record.thumbnail).parent == studio.videos
    assert studio.table()[0][:4] == [1, T2V, PROMPT, 7]


def test_a_first_frame_starts_the_video(studio, tmp_path):
    image = first_frame_png(tmp_path / "first.png")
    record = studio.generate(Request(model=T2V, prompt=PROMPT, image=str(image), steps=3))
    frame0 = read_video(record.file)[0].astype(np.float64)
    given = np.asarray(Image.open(image).convert("RGB"), dtype=np.float64)
    psnr = 10 * np.log10(255.0 ** 2 / np.mean((frame0 - given) ** 2))
    assert psnr >= 25.0, psnr
    assert "first frame given" in record.caption()


def test_a_class_model_reads_the_caption_as_its_class(studio):
    record = studio.generate(Request(model=CLASS, prompt="A Blue Square moving UP", steps=2))
    assert record.frames == 16  # its own clip length by default
    assert record.request.prompt == "A Blue Square moving UP"


def test_long_video_beyond_one_clip(studio):
    seen = []
    record = studio.generate(Request(model=T2V, prompt=PROMPT, frames=25, long="autoregressive", steps=2),
                             progress=lambda fraction, text: seen.append(text))
    assert read_video(record.file).shape == (25, 32, 32, 3)
    assert record.request.long == "autoregressive"
    assert any("autoregressive video" in text for text in seen), seen
    # at most one clip's worth: the long mode is not used
    record = studio.generate(Request(model=T2V, prompt=PROMPT, frames=9, long="fifo", steps=2))
    assert record.request.long is None and record.frames == 9


def test_same_seed_other_model(studio):
    base = studio.generate(Request(model=T2V, prompt=PROMPT, steps=2, seed=3, cfg=3.0))
    other = studio.compare(base.id, CLASS)
    assert other.request.model == CLASS and other.compared_with == base.id
    assert (other.request.seed, other.request.steps, other.request.cfg, other.request.prompt) == (3, 2, 3.0, PROMPT)
    assert other.frames == 16 and "16 frames instead of 17" in other.notes[0]  # its own clip length
    with pytest.raises(DemoError, match="choose another model"):
        studio.compare(base.id, T2V)
    with pytest.raises(DemoError, match="generate a video first"):
        studio.compare(None, CLASS)
    assert [r[0] for r in studio.table()] == [2, 1]


# ------------------------------------------------------------------ helpers


def test_write_webm_pads_odd_sizes(tmp_path):
    video = np.random.default_rng(0).integers(0, 255, (5, 7, 9, 3), dtype=np.uint8)
    back = read_video(write_webm(video, tmp_path / "v.webm", fps=8))
    assert back.shape == (5, 8, 10, 3)
    with pytest.raises(ValueError, match="uint8"):
        write_webm(video.astype(np.float32), tmp_path / "w.webm", fps=8)


def test_follow_progress_puts_tqdm_back():
    import tqdm.auto

    original = tqdm.auto.tqdm
    seen = []
    with pytest.raises(RuntimeError):
        with follow_progress(lambda f, t: seen.append((f, t))):
            assert tqdm.auto.tqdm is not original
            for _ in tqdm.auto.tqdm(range(2), desc="work"):
                pass
            raise RuntimeError("stop")
    assert tqdm.auto.tqdm is original
    assert seen == [(0.0, "work: 0/2 steps"), (0.5, "work: 1/2 steps"), (1.0, "work: 2/2 steps")]


# ------------------------------------------------------------------ the command


def test_cli_defaults_are_safe():
    args = build_parser().parse_args(["demo"])
    assert (args.host, args.port, args.share, args.checkpoint) == ("127.0.0.1", 7860, False, [])


def test_default_models_are_the_shipped_diffusion_models():
    names = [p.name for p in shipped_checkpoints(CKPTS)]
    assert names == [T2V, DIFFUSERS, CLASS, WALT]  # not the autoencoders beside them


def test_cli_serves_on_loopback_by_default(monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    calls = {}

    def fake_serve(app, **kwargs):
        calls.update(kwargs, app=app)

    monkeypatch.setenv("GRADIO_TEMP_DIR", "unset")  # build_app sets it: restored after the test
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", "unset")
    monkeypatch.setattr("moviola.demo.app.serve", fake_serve)
    assert main(["demo", str(CKPTS / DIFFUSERS), "--out-dir", str(tmp_path / "out")]) == 0
    assert calls["host"] == "127.0.0.1" and calls["share"] is False and calls["port"] == 7860


def test_cli_errors_are_one_line(capsys, tmp_path):
    for argv, needle in [(["demo", str(CKPTS / "shapes-causal-vae-32")], "not a diffusion model"),
                         (["demo", str(CKPTS / T2V), "--port", "0"], "--port must be 1 to 65535"),
                         (["demo", str(tmp_path / "nothing")], "no such checkpoint")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("moviola: error: ") and needle in err[0], err


# ------------------------------------------------------------------ the server sends files from the output dir only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_server_sends_no_file_from_outside_the_output_directory(models, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    import httpx

    from moviola.demo.app import build_app, serve

    monkeypatch.setenv("GRADIO_TEMP_DIR", "unset")
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", "unset")
    work = tmp_path / "cwd"
    (work / ".gradio" / "cached_examples").mkdir(parents=True)
    (work / ".gradio" / "cached_examples" / "old.txt").write_text("another app's example")
    monkeypatch.chdir(work)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the page")
    shared = Path(tempfile.gettempdir()) / "gradio" / f"moviola-test-{uuid.uuid4().hex}.txt"
    shared.parent.mkdir(exist_ok=True)
    shared.write_text("another gradio app's upload")

    studio = Studio(models, tmp_path / "out")
    record = studio.generate(Request(model=T2V, prompt=PROMPT, steps=2))
    app = build_app(studio)
    serve(app, port=free_port(), block=False, quiet=True)
    try:
        assert app.server_name == "127.0.0.1" and not app.share
        assert app.allowed_paths == []
        base = app.local_url.rstrip("/") + "/gradio_api/file="
        ok = httpx.get(base + record.file)
        assert ok.status_code == 200 and ok.content == Path(record.file).read_bytes()
        private = studio.out_dir / "private.txt"  # the output folder itself is not served: only its served/ part
        private.write_text("not for the page")
        for path in ["/etc/passwd", str(secret), f"{studio.out_dir}/../secret.txt", str(CKPTS / T2V / "config.json"),
                     str(private), str(studio.out_dir / "generations.jsonl"),
                     str(shared), str(work / ".gradio" / "cached_examples" / "old.txt"), str(ROOT / "pyproject.toml")]:
            for url in (base + path, base.replace("file=", "file/") + path):  # the route and its old spelling
                response = httpx.get(url)
                assert response.status_code == 403, (url, response.status_code)
        for url in ("static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "assets/..%2F..%2F..%2F..%2Fetc%2Fpasswd"):
            response = httpx.get(app.local_url + url)  # Gradio's own front-end files, no way out of them
            assert response.status_code in (403, 404) and b"root:" not in response.content, (url, response.status_code)
    finally:
        app.close()
        shared.unlink()


def test_a_second_session_in_the_same_folder_never_overwrites_the_first(models, tmp_path):
    first = Studio(models, tmp_path / "out").generate(Request(model=T2V, prompt=PROMPT, steps=2))
    kept = Path(first.file).read_bytes()
    second = Studio(models, tmp_path / "out").generate(Request(model=T2V, prompt=PROMPT, steps=2, seed=1))
    assert second.id == first.id + 1 and second.file != first.file
    assert Path(first.file).read_bytes() == kept
    ids = [json.loads(line)["id"] for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert ids == [first.id, second.id]
