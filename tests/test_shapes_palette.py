"""data.palette: Moving Shapes with colour words drawn in other RGB values (the personalization and style
fine-tunes): only the named colours change, captions and labels keep their words, the latent cache keys it."""
from __future__ import annotations

import numpy as np
import pytest

from moviola.config import ConfigError, load_config, to_dict
from moviola.data import build_dataset
from moviola.data.latent_cache import dataset_fingerprint
from moviola.data.shapes import COLOURS, MovingShapes, sample_clip

MAGENTA = (230, 50, 230)


def test_a_palette_redraws_only_its_colours_with_the_same_coverage():
    plain, recoloured = MovingShapes(count=40), MovingShapes(count=40, palette={"red": MAGENTA})
    changed = 0
    for i in range(40):
        a, b = plain.clip(i), recoloured.clip(i)
        assert (a["caption"], a["label"]) == (b["caption"], b["label"])
        if a["colour"] != "red":
            assert np.array_equal(a["video"], b["video"])
            continue
        changed += 1
        # the same coverage: pixel = round(coverage · rgb), so the red and magenta drawings agree where the
        # channels of the two colours agree (R, G) and B follows the coverage the red channel shows
        assert np.array_equal(a["video"][..., :2], b["video"][..., :2])
        cov = a["video"][..., 0] / COLOURS["red"][0]
        assert np.abs(b["video"][..., 2] - cov * MAGENTA[2]).max() <= 1.0
        assert b["video"][..., 2].max() == MAGENTA[2]
    assert changed == 10  # 10 red combinations among the 40 training classes


def test_strided_clips_take_the_palette_too():
    a = sample_clip(0, 0, stride=2, frames=6, palette={"red": MAGENTA})
    b = sample_clip(0, 0, stride=2, frames=6)
    assert a["colour"] == "red" and not np.array_equal(a["video"], b["video"])


@pytest.mark.parametrize("palette, words", [({"purple": MAGENTA}, ["purple", "red"]),
                                            ({"red": (300, 0, 0)}, ["0..255"]),
                                            ({"red": (1, 2)}, ["three ints"])])
def test_bad_palettes_are_named(palette, words):
    with pytest.raises(ValueError) as e:
        MovingShapes(count=4, palette=palette)
    assert all(w in str(e.value) for w in words)


def test_the_config_key_builds_the_dataset_and_keys_the_latent_cache():
    cfg = load_config(overrides=["data.palette.red=[230,50,230]", "data.count=48"])
    assert cfg.data.palette.colours() == {"red": MAGENTA}
    data = build_dataset(cfg.data)
    assert data.clip(0)["colour"] == "red" and data.clip(0)["video"][..., 2].max() == MAGENTA[2]
    plain = load_config(overrides=["data.count=48"])
    assert dataset_fingerprint(to_dict(plain)["data"], data) != dataset_fingerprint(to_dict(cfg)["data"], data)
    # a config without the key keeps the fingerprint it had before the key existed
    old = {k: v for k, v in to_dict(plain)["data"].items() if k != "palette"}
    assert dataset_fingerprint(old, data) == dataset_fingerprint(to_dict(plain)["data"], data)


@pytest.mark.parametrize("extra, words", [(["data.palette.red=[256,0,0]"], ["data.palette.red", "0..255"]),
                                          (["data.palette.pink=[1,2,3]"], ["data.palette.pink"]),
                                          (["data.palette.red=[1,2,3]", "data.dataset=folder", "data.root=/x"],
                                           ["data.palette", "shapes"])])
def test_bad_palette_keys_are_one_line_config_errors(extra, words):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=extra)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------- the scorer
def test_the_scorer_reads_colours_against_a_palette():
    from moviola.eval.shapes_score import score_batch, score_video

    plain, recoloured = MovingShapes(count=40), MovingShapes(count=40, palette={"red": MAGENTA})
    red = [i for i in range(40) if plain.clip(i)["colour"] == "red"]
    palette = {"red": MAGENTA}
    for i in red[:3]:
        assert score_video(recoloured.clip(i)["video"], palette)["colour"] == "red"  # adopted
        assert score_video(plain.clip(i)["video"], palette)["colour"] == "spec:red"  # still the spec's red
        assert score_video(plain.clip(i)["video"])["colour"] == "red"
    labels = [plain.clip(i)["label"] for i in range(40)]
    assert score_batch([recoloured.clip(i)["video"] for i in range(40)], labels, palette)["match_rate"] == 1.0
    assert score_batch([plain.clip(i)["video"] for i in range(40)], labels, palette)["colour_acc"] == 0.75
    with pytest.raises(ValueError, match="purple"):
        score_video(plain.clip(0)["video"], {"purple": MAGENTA})


def test_the_eval_palette_flag_is_parsed_and_checked():
    from moviola.cli.evaluate import parse_palette

    assert parse_palette(["red=230,50,230", "blue=1,2,3"]) == {"red": MAGENTA, "blue": (1, 2, 3)}
    for bad in ("red=230,50", "pink=1,2,3", "red=a,b,c", "red=256,0,0"):
        with pytest.raises(ValueError, match="--palette"):
            parse_palette([bad])


def test_a_swapping_palette_names_each_value_by_its_new_word():
    """Red drawn yellow and yellow drawn red: each value's spec name stays a candidate but the palette's word
    wins the tie, so the recoloured clips all match and the spec's clips miss on those two colours."""
    from moviola.eval.shapes_score import score_batch

    swap = {"red": COLOURS["yellow"], "yellow": COLOURS["red"]}
    plain, swapped = MovingShapes(count=40), MovingShapes(count=40, palette=swap)
    labels = [plain.clip(i)["label"] for i in range(40)]
    assert score_batch([swapped.clip(i)["video"] for i in range(40)], labels, swap)["match_rate"] == 1.0
    rows = score_batch([plain.clip(i)["video"] for i in range(40)], labels, swap)["rows"]
    for r in rows:
        expect = {"red": "yellow", "yellow": "red"}.get(r["target"]["colour"], r["target"]["colour"])
        assert r["colour"] == expect
