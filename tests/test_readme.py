"""The README's code runs as written.

- Every ```python block of README.md (and of docs/text.md) runs, in order, in a fresh interpreter whose working
  directory is a temporary directory holding a ``checkpoints`` link to the repository's shipped
  checkpoints: the paths the README names resolve, and what it writes lands in the temporary
  directory, not in the checkout.
- The one change made to the blocks: ``steps=<N>`` becomes ``steps=2`` (``SMALLER``), so the
  test samples in seconds; every other value runs as the README prints it.
- Every ``moviola ...`` line of a ```bash block of README.md and of the docs it sends a new user
  to (docs/own-data.md, docs/text.md) parses with the real argument parser: the subcommand and
  every flag exist. Commands that need data or weights the repository does not have are only
  parsed, not run.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OWN_DATA = ROOT / "docs" / "own-data.md"
COMMAND_DOCS = (README, OWN_DATA, *(ROOT / "docs" / f for f in ("text.md", "latte.md", "autoencoders.md")))

# the one substitution: sampling steps in the snippets, for time (the README's values run too, slower)
SMALLER = ((re.compile(r"\bsteps=\d+"), "steps=2"),)


def code_blocks(path: Path, language: str) -> list[str]:
    """The bodies of the ```<language> fenced blocks of a markdown file, in order."""
    pattern = re.compile(rf"^```{language}[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
    return pattern.findall(path.read_text(encoding="utf-8"))


def moviola_commands(path: Path) -> list[str]:
    """Each ``moviola ...`` command line of the file's bash blocks (continuation lines joined)."""
    out = []
    for block in code_blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "moviola":
                out.append(line)
    return out


def test_readme_has_python_and_commands():
    assert code_blocks(README, "python"), "README.md has no ```python block"
    assert len(moviola_commands(README)) >= 10


@pytest.mark.parametrize("doc", (README, ROOT / "docs" / "text.md"), ids=lambda p: p.name)
def test_python_blocks_run(doc, tmp_path):
    source = "\n\n".join(code_blocks(doc, "python"))
    for pattern, replacement in SMALLER:
        source = pattern.sub(replacement, source)
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints", target_is_directory=True)
    (tmp_path / "snippets.py").write_text(source, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "snippets.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{doc.name}'s python blocks failed:\n{proc.stderr[-3000:]}"
    # what the snippets write lands in the working directory (not beside the checkpoints)
    written = {p.name for p in tmp_path.iterdir()} - {"checkpoints", "snippets.py"}
    assert written, f"{doc.name}'s python blocks wrote no file"


@pytest.mark.parametrize("doc", COMMAND_DOCS, ids=lambda p: p.name)
def test_doc_commands_parse(doc, capsys):
    """Every `moviola ...` line of the doc's bash blocks: the subcommand and each flag exist."""
    from moviola.cli import build_parser

    if not doc.exists():
        pytest.fail(f"{doc.relative_to(ROOT)} does not exist")
    commands = moviola_commands(doc)
    assert commands, f"no moviola command in {doc.name}"
    bad = []
    for line in commands:
        argv = shlex.split(line, comments=True)[1:]
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            bad.append(f"{line.strip()}\n    -> exit {e.code}: {capsys.readouterr().err.strip()}")
    assert not bad, "commands that do not parse:\n" + "\n".join(bad)


def test_own_data_python_blocks_run(tmp_path):
    """docs/own-data.md's snippet cuts a long video into clips of the span one clip reads."""
    from moviola.data.shapes import render_clip
    from moviola.video import probe_video, save_video

    save_video(render_clip("red", "circle", "right", frames=40, bounce=True), tmp_path / "long.mp4", fps=25)
    source = "\n\n".join(code_blocks(OWN_DATA, "python"))
    assert source, "docs/own-data.md has no python block"
    (tmp_path / "own_data_snippets.py").write_text(source, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "own_data_snippets.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"docs/own-data.md python blocks failed:\n{proc.stderr[-3000:]}"
    clips = sorted((tmp_path / "myvideos" / "long").glob("*.mp4"))
    assert len(clips) == 2 and all(probe_video(c)["frames"] == 17 for c in clips)


def test_own_data_config_loads(tmp_path):
    """The page's example config is a valid run config (its VAE and folder put in place)."""
    from moviola.config import load_config

    blocks = code_blocks(OWN_DATA, "yaml")
    assert len(blocks) == 1, "docs/own-data.md should show one config"
    (tmp_path / "mine.yaml").write_text(blocks[0], encoding="utf-8")
    (tmp_path / "myvideos").mkdir()
    cfg = load_config(tmp_path / "mine.yaml", [
        f"autoencoder.path={ROOT / 'checkpoints' / 'shapes-causal-vae-32'}", f"data.root={tmp_path / 'myvideos'}"])
    assert cfg.data.dataset == "folder" and cfg.data.latent_cache
    assert cfg.conditions.text_channels == 384 and cfg.autoencoder.kind == "causal_vae"


def test_readme_links_own_data_page():
    text = README.read_text(encoding="utf-8")
    assert "docs/own-data.md" in text
    assert (ROOT / "docs" / "own-data.md").is_file()
