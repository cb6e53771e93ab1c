"""The demo's page: a Gradio Blocks app over a :class:`~moviola.demo.core.Studio` (the model logic lives there).

``build_app(studio)`` lays out the page; ``serve(app, ...)`` starts it with the safe defaults:

- bound to 127.0.0.1 unless another host is asked for, and no public share link unless ``share=True``;
- files served only from the studio's output directory: Gradio's upload and cache folder
  (``GRADIO_TEMP_DIR``) and its examples cache (``GRADIO_EXAMPLES_CACHE``) are set inside it before the page is
  built, ``allowed_paths`` is empty (Gradio serves a file only when it is in ``allowed_paths``, its upload
  folder or its examples cache), uploads are capped at :data:`MAX_UPLOAD`, the run history (which can send runs
  to a remote bucket) is off, and so is telemetry;
- one generation at a time: the others wait in the queue (``queue(default_concurrency_limit=1)``).

Every message for bad input is shown in the page's status box (``#status``), never a stack trace; an
unexpected failure is one line there too, its traceback on the server's console.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Optional

from moviola.demo.core import MAX_FRAMES, TABLE_COLUMNS, DemoError, Request, Studio

__all__ = ["MAX_UPLOAD", "build_app", "confine_files", "serve"]

MAX_UPLOAD = "20mb"
NO_LONG = "none"
CSS = """
#result video, #compare video, #gallery img, #gallery video { image-rendering: pixelated; }
#status textarea { font-weight: 600; }
"""


def confine_files(served) -> Path:
    """Point Gradio's upload/cache folder and examples cache into ``served`` (the studio's ``served`` folder, which
    holds its videos; before any component is made: each reads the folder when built), so that every file the
    server may send is under it. Gradio serves anything under its upload folder: it is a subfolder of the output
    directory, never the output directory itself, so ``--out-dir .`` does not publish the working directory."""
    out = Path(served).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(out)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(out / "examples")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    return out


def build_app(studio: Studio, title: str = "moviola demo"):
    """The page over ``studio``: model, prompt, first frame, settings, Generate, the video and its download,
    "same seed, other model", and the gallery of every generation since the start."""
    import gradio as gr

    confine_files(studio.served)
    names = studio.names
    first = studio.model(names[0])
    any_image = any(m.takes_image for m in studio.models.values())

    def model_updates(name: str):
        m = studio.model(name)
        return (gr.update(value=m.description()),
                gr.update(placeholder=m.prompt_example(), info=f"{m.name}: {m.prompt_hint()}"),
                gr.update(visible=m.takes_image, value=None),
                gr.update(visible=m.takes_image, value=None),
                gr.update(value=m.frames),
                gr.update(value=m.default_steps),
                gr.update(value=m.default_cfg),
                gr.update(value=m.default_sampler),
                gr.update(visible=m.takes_fps, value=m.default_fps if m.takes_fps else None),
                long_update(m, m.frames),
                gr.update(choices=[n for n in names if n != name] or names,
                          value=next((n for n in names if n != name), name)))

    def long_update(m, frames):
        over = frames is not None and frames > m.frames
        return gr.update(choices=[NO_LONG, *m.long_modes], visible=over,
                         value=m.long_modes[0] if over else NO_LONG)

    def on_model(name):
        try:
            return model_updates(name)
        except DemoError as e:
            raise gr.Error(str(e))

    def on_frames(name, frames, long):
        try:
            m = studio.model(name)
        except DemoError:
            return gr.update()
        over = frames is not None and frames > m.frames
        if over and long in m.long_modes:
            return gr.update(visible=True)
        return long_update(m, frames)

    def on_image(path):
        """Show the uploaded first frame, or say why it cannot be read."""
        if not path:
            return gr.update(value=None), ""
        try:
            Studio.check_image(path)
        except DemoError as e:
            return gr.update(value=None), f"Cannot use this image: {e}"
        from moviola.video import read_image

        return gr.update(value=read_image(path)), f"First frame: {Path(path).name}"

    def status_of(record, head: str) -> str:
        text = f"{head} #{record.id}: {record.frames} frames of {record.width}×{record.height} with " \
               f"{record.request.model} in {record.seconds:.1f} s (seed {record.request.seed})"
        if record.notes:
            text += "\nNote: " + "\nNote: ".join(record.notes)
        return text

    def progress_fn(progress):
        return lambda fraction, text: progress(fraction, desc=text)

    def on_generate(name, prompt, image, frames, steps, cfg, sampler, seed, fps, long,
                    progress=gr.Progress()):
        req = Request(model=name, prompt=prompt or "", frames=frames, steps=steps, cfg=cfg, sampler=sampler,
                      seed=seed, image=image or None, fps=fps, long=None if long in (None, NO_LONG) else long)
        try:
            record = studio.generate(req, progress=progress_fn(progress))
        except DemoError as e:
            return (gr.skip(), gr.skip(), f"Cannot generate: {e}", gr.skip(), gr.skip(), gr.skip())
        except Exception as e:  # a fault, not the person's input: one line here, the traceback on the console
            traceback.print_exc(file=sys.stderr)
            return (gr.skip(), gr.skip(), f"Generation failed ({type(e).__name__}): {str(e).splitlines()[0] if str(e) else ''}",
                    gr.skip(), gr.skip(), gr.skip())
        return (record.file, gr.update(value=record.download, visible=True), status_of(record, "Made"),
                studio.gallery(), studio.table(), record.id)

    def on_compare(other, last_id, progress=gr.Progress()):
        try:
            record = studio.compare(last_id, other, progress=progress_fn(progress))
        except DemoError as e:
            return gr.skip(), f"Cannot compare: {e}", gr.skip(), gr.skip()
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            return gr.skip(), f"Comparison failed ({type(e).__name__}): {str(e).splitlines()[0] if str(e) else ''}", \
                gr.skip(), gr.skip()
        return (record.file, status_of(record, f"Compared #{record.compared_with} →"), studio.gallery(),
                studio.table())

    def on_load():
        return studio.gallery(), studio.table()

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\nGenerate a short video from a prompt with one of the models below, then make the "
                    "same request with another model to compare them. Everything runs on this machine.")
        with gr.Row():
            with gr.Column(scale=3):
                model = gr.Dropdown(names, value=names[0], label="Model", elem_id="model")
                about = gr.Markdown(first.description(), elem_id="about")
                prompt = gr.Textbox(label="Prompt", placeholder=first.prompt_example(), elem_id="prompt",
                                    info=f"{first.name}: {first.prompt_hint()}", max_length=400)
                with gr.Row(visible=any_image):
                    image = gr.File(label="First frame (optional: image-to-video)", file_types=["image"],
                                    type="filepath", visible=first.takes_image, elem_id="first-frame")
                    preview = gr.Image(label="First frame", interactive=False, visible=first.takes_image,
                                       height=160, elem_id="first-frame-preview")
                with gr.Accordion("Settings", open=True):
                    with gr.Row():
                        frames = gr.Slider(1, MAX_FRAMES, value=first.frames, step=1, label="Frames",
                                           elem_id="frames")
                        long = gr.Radio([NO_LONG, *first.long_modes], value=NO_LONG, visible=False,
                                        label="Long video (frames beyond one clip)", elem_id="long")
                    with gr.Row():
                        steps = gr.Slider(1, 250, value=first.default_steps, step=1, label="Steps", elem_id="steps")
                        cfg = gr.Slider(0, 15, value=first.default_cfg, step=0.5, label="Guidance (cfg)",
                                        elem_id="cfg")
                    with gr.Row():
                        from moviola.diffusion.samplers import SAMPLERS

                        sampler = gr.Dropdown(list(SAMPLERS), value=first.default_sampler, label="Sampler",
                                              elem_id="sampler")
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="seed")
                        fps = gr.Number(first.default_fps if first.takes_fps else None, label="Frame rate (fps)",
                                        visible=first.takes_fps, elem_id="fps")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Textbox(label="Status", interactive=False, lines=2, elem_id="status")
            with gr.Column(scale=2):
                result = gr.Video(label="Result", interactive=False, height=288, autoplay=True, loop=True,
                                  elem_id="result")
                download = gr.DownloadButton("Download mp4", visible=False, elem_id="download")
                with gr.Row():
                    other = gr.Dropdown([n for n in names if n != names[0]] or names,
                                        value=next((n for n in names if n != names[0]), names[0]),
                                        label="Other model", elem_id="other", scale=2)
                    compare = gr.Button("Same seed, other model", elem_id="compare-button", scale=1)
                compared = gr.Video(label="Same seed, other model", interactive=False, height=288, autoplay=True,
                                    loop=True, elem_id="compare")
        gr.Markdown("## Gallery: every generation since the demo started")
        gallery = gr.Gallery(label="Generations (newest first)", columns=8, height="auto",
                             object_fit="contain", elem_id="gallery", interactive=False)
        table = gr.Dataframe(headers=list(TABLE_COLUMNS), label="Settings", interactive=False, elem_id="table")
        last = gr.State(None)

        model.change(on_model, model, [about, prompt, image, preview, frames, steps, cfg, sampler, fps, long, other])
        frames.change(on_frames, [model, frames, long], long)
        image.change(on_image, image, [preview, status])
        inputs = [model, prompt, image, frames, steps, cfg, sampler, seed, fps, long]
        made = [result, download, status, gallery, table, last]
        generate.click(on_generate, inputs, made, show_progress_on=[result])
        prompt.submit(on_generate, inputs, made, show_progress_on=[result])
        compare.click(on_compare, [other, last], [compared, status, gallery, table], show_progress_on=[compared])
        app.load(on_load, None, [gallery, table])
    app.queue(default_concurrency_limit=1, max_size=32)
    return app


def serve(app, host: str = "127.0.0.1", port: Optional[int] = 7860, share: bool = False, block: bool = True,
          quiet: bool = False):
    """Start ``app`` (from :func:`build_app`) with the safe defaults of the module docstring and print its address.
    ``block=False`` returns once the server answers (tests; stop it with ``app.close()``)."""
    import gradio as gr

    theme = gr.themes.Default()  # its fonts ship with Gradio: the page asks no other host for anything
    app.launch(server_name=host, server_port=port, share=share, allowed_paths=[], max_file_size=MAX_UPLOAD,
               show_error=False, prevent_thread_lock=True, quiet=True, inbrowser=False, run_history=False,
               footer_links=["api", "settings"], ssr_mode=False, mcp_server=False, pwa=False, theme=theme, css=CSS)
    if not quiet:
        print(f"moviola demo: open {app.local_url} (Ctrl+C stops it)", flush=True)
        if share and getattr(app, "share_url", None):
            print(f"moviola demo: public link {app.share_url} (anyone with it can use the page)", flush=True)
    if block:
        app.block_thread()
    return app
