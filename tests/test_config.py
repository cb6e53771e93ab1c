"""Configs: strict YAML in / JSON out, closest-key suggestions, typed errors, shape validation and
``--set`` overrides that keep their YAML types."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import json

import pytest
import yaml

from moviola.config import (ConfigError, RunConfig, config_from_json, from_dict, load_config, parse_override,
                            save_config, to_dict)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p for p in CONFIGS.rglob("*.yaml")
                 if not {"studies", "cascades"} & set(p.relative_to(CONFIGS).parts))  # run configs only
STUDIES = sorted((CONFIGS / "studies").glob("*.yaml"))


@pytest.mark.parametrize("study", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_presets_load_with_every_variant_config(study):
    from moviola.study import load_study, variant_config

    s = load_study(study)
    for v in s.variants:
        assert variant_config(s, v).train.steps == s.steps


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_error_is_a_value_error():
    # the CLI turns ValueErrors into one-line messages
    assert issubclass(ConfigError, ValueError)


def test_defaults_validate():
    cfg = load_config()
    assert cfg == RunConfig().validate()
    assert dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_load_and_round_trip_through_yaml_and_json(preset, tmp_path):
    overrides = []
    if "root: null" in preset.read_text():  # a GPU preset for the user's own video folder
        overrides.append(f"data.root={tmp_path}")
    if "kind: causal_vae" in preset.read_text() and "path: checkpoints/" in preset.read_text():
        # a preset on a shipped causal VAE: any CausalVAE directory of the same shape stands in for it
        from moviola.autoencoders.causal_vae import CausalVAE

        CausalVAE(base_channels=8, channel_mults=(1, 2, 2), temporal_downsample=(True, True),
                  spatial_downsample=(True, True), latent_channels=4,
                  norm_groups=4).save_pretrained(tmp_path / "cvae")
        overrides.append(f"autoencoder.path={tmp_path / 'cvae'}")
    if "kind: temporal_decoder" in preset.read_text():  # on a shipped frame VAE: any frame VAE config stands in
        (tmp_path / "fvae").mkdir()
        (tmp_path / "fvae" / "config.json").write_text(json.dumps({"block_out_channels": [32, 64, 64]}))
        overrides.append(f"autoencoder.path={tmp_path / 'fvae'}")
    text = preset.read_text()
    if "kind: frame_vae" in text and "path: null" not in text and "path: checkpoints/" not in text:
        # the GPU presets: the VAE directory is given by the user (a preset on the shipped frame VAE needs none)
        from moviola.training.trainer import Trainer

        with pytest.raises(ConfigError, match=r"without autoencoder\.path is a new, untrained autoencoder"):
            Trainer(load_config(preset, overrides), tmp_path / "run")  # refused before any data or model is built
        assert not (tmp_path / "run").exists()
        (tmp_path / "vae").mkdir()
        (tmp_path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [128, 256, 512, 512]}))
        overrides.append(f"autoencoder.path={tmp_path / 'vae'}")
    cfg = load_config(preset, overrides)
    # YAML out and in
    out = write_yaml(tmp_path / "again.yaml", yaml.safe_dump(to_dict(cfg)))
    assert load_config(out) == cfg
    # JSON out and in (what sits beside every checkpoint)
    save_config(cfg, tmp_path / "config.json")
    assert config_from_json(tmp_path / "config.json") == cfg


def test_yaml_round_trip_of_a_non_default_config(tmp_path):
    text = """
name: rt
model: {size: S, patch_size: 4, hidden_size: 64, depth: 2, num_heads: 4, learned_sigma: true}
conditions: {num_classes: 48}
data: {size: 64, frames: 8}
diffusion: {schedule: cosine, prediction: v, zero_terminal_snr: true}
train: {lr: 3.0e-4, betas: [0.9, 0.99], steps: 12, precision: bf16}
sample: {cfg: 1.5, sampler: ddpm}
"""
    cfg = load_config(write_yaml(tmp_path / "a.yaml", text))
    assert cfg.model.size == "S" and cfg.conditions.num_classes == 48 and cfg.model.learned_sigma is True
    assert cfg.train.betas == (0.9, 0.99) and isinstance(cfg.train.betas, tuple)
    assert cfg.train.lr == 3e-4 and cfg.data.frames == 8 and cfg.sample.sampler == "ddpm"
    assert cfg.train.batch_size == RunConfig().train.batch_size  # unspecified keys keep defaults
    again = load_config(write_yaml(tmp_path / "b.yaml", yaml.safe_dump(to_dict(cfg))))
    assert again == cfg
    d = to_dict(cfg)
    assert d["train"]["betas"] == [0.9, 0.99]  # plain JSON types


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-4` as a string; configs must read it as the number
    cfg = load_config(write_yaml(tmp_path / "c.yaml", "train:\n  lr: 1e-4\n  weight_decay: 5E-2\n"))
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == pytest.approx(0.05)


# ------------------------------------------------------------------ unknown keys

@pytest.mark.parametrize("text,bad,suggestion", [
    ("train:\n  lrr: 0.1\n", "train.lrr", "train.lr"),
    ("modle:\n  size: tiny\n", "modle", "model"),
    ("model:\n  hiden_size: 64\n", "model.hiden_size", "model.hidden_size"),
    ("data:\n  frame: 8\n", "data.frame", "data.frames"),
])
def test_unknown_key_suggests_the_closest_known_key(tmp_path, text, bad, suggestion):
    with pytest.raises(ConfigError) as e:
        load_config(write_yaml(tmp_path / "x.yaml", text))
    msg = str(e.value)
    assert bad in msg and f"did you mean '{suggestion}'" in msg
    assert "\n" not in msg


def test_unknown_key_without_a_close_match_lists_the_known_keys():
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"zzzzzz": 1})
    assert "zzzzzz" in str(e.value) and "model" in str(e.value) and "train" in str(e.value)


def test_unknown_literal_value_suggests_the_closest_option():
    with pytest.raises(ConfigError, match=r"diffusion\.prediction.*did you mean 'eps'"):
        load_config(overrides=["diffusion.prediction=epsilon"])


# ------------------------------------------------------------------ wrong types

@pytest.mark.parametrize("override,key", [
    ("train.steps=abc", "train.steps"),
    ("train.steps=true", "train.steps"),  # a bool is not an int
    ("train.steps=2.5", "train.steps"),
    ("train.lr=fast", "train.lr"),
    ("train.lr=null", "train.lr"),
    ("model.learned_sigma=1", "model.learned_sigma"),
    ("name=[1, 2]", "name"),
    ("train.betas=[0.9]", "train.betas"),
    ("train.betas=[0.9, x]", "train.betas[1]"),
    ("model=3", "model"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert str(e.value).startswith(f"{key}:") or f"{key}" in str(e.value).split(":")[0]


def test_wrong_type_in_a_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.steps: expected an integer, got 'abc'"):
        load_config(write_yaml(tmp_path / "t.yaml", 'train:\n  steps: "abc"\n'))


def test_lossless_conversions_are_accepted():
    cfg = load_config(overrides=["train.lr=1", "train.steps=20.0", "model.hidden_size=null"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 20 and isinstance(cfg.train.steps, int)
    assert cfg.model.hidden_size is None


# ------------------------------------------------------------------ impossible settings

@pytest.mark.parametrize("overrides,match", [
    (["data.size=30", "model.patch_size=4"], r"data\.size=30 is not divisible"),
    (["data.size=36", "model.patch_size=8"], r"not divisible"),
    (["model.depth=3"], r"model\.depth=3 must be even"),
    (["model.hidden_size=60", "model.num_heads=8"], r"not divisible by model\.num_heads"),
    (["model.hidden_size=30", "model.num_heads=3"], r"multiple of 4"),
    (["model.size=XXL"], r"model\.size"),
    (["model.patch_size=3"], r"patch"),
    (["train.steps=0"], r"train\.steps must be positive"),
    (["train.batch_size=-1"], r"train\.batch_size"),
    (["train.ema_decay=1.0"], r"train\.ema_decay"),
    (["train.lr=0"], r"train\.lr"),
    (["data.frames=0"], r"positive"),
    (["autoencoder.kind=causal_vae", "data.frames=16"], r"data\.frames=16 does not fit the causal VAE.*13 or 17"),
    (["autoencoder.kind=causal_vae", "autoencoder.temporal_downsample=[true]"], r"needs 3 entries"),
    (["autoencoder.kind=causal_vae", "data.frames=17", "autoencoder.chunk_frames=6"], r"multiple of .* 4"),
    (["autoencoder.kind=frame_vae", "autoencoder.base_channels=20"], r"divisible by autoencoder\.norm_groups"),
    (["data.dataset=folder"], r"data\.root"),
    (["autoencoder.kind=frame_vae", "autoencoder.path=/nonexistent"], r"has no config\.json"),
])
def test_impossible_settings_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=overrides)


@pytest.mark.parametrize("blocks,size,ok", [(4, 36, False), (4, 64, True), (2, 36, True), (2, 35, False)])
def test_vae_factor_is_read_from_the_vae_config(tmp_path, blocks, size, ok):
    """An SD VAE (4 blocks) shrinks 8×, a 2-block VAE 2×: the divisibility check uses the real factor."""
    (tmp_path / "config.json").write_text(json.dumps({"block_out_channels": [8] * blocks}))
    overrides = ["autoencoder.kind=frame_vae", f"autoencoder.path={tmp_path}", f"data.size={size}",
                 "model.patch_size=1"]
    if ok:
        assert load_config(overrides=overrides).data.size == size
    else:
        with pytest.raises(ConfigError, match=r"autoencoder factor = 1×%d" % 2 ** (blocks - 1)):
            load_config(overrides=overrides)


def test_possible_settings_pass():
    cfg = load_config(overrides=["data.size=24", "model.patch_size=8", "model.depth=6",
                                 "model.hidden_size=36", "model.num_heads=4"])
    assert cfg.data.size == 24 and cfg.model.depth == 6


# ------------------------------------------------------------------ --set overrides

@pytest.mark.parametrize("text,key,value,type_", [
    ("train.lr=1e-4", "train.lr", 1e-4, float),
    ("train.lr=3.0e-4", "train.lr", 3e-4, float),
    ("train.steps=12", "train.steps", 12, int),
    ("model.learned_sigma=true", "model.learned_sigma", True, bool),
    ("train.betas=[0.9, 0.99]", "train.betas", [0.9, 0.99], list),
    ("name=my run", "name", "my run", str),
    ("name=a=b", "name", "a=b", str),
    ("model.hidden_size=null", "model.hidden_size", None, type(None)),
    (" train.steps =5", "train.steps", 5, int),
])
def test_parse_override_keeps_yaml_types(text, key, value, type_):
    k, v = parse_override(text)
    assert k == key and v == value and type(v) is type_


@pytest.mark.parametrize("bad", ["train.lr", "=3", ""])
def test_parse_override_rejects_malformed(bad):
    with pytest.raises(ConfigError, match="key=value"):
        parse_override(bad)


def test_overrides_apply_over_the_file_and_keep_types(tmp_path):
    path = write_yaml(tmp_path / "o.yaml", "train:\n  lr: 0.1\n  steps: 7\nconditions:\n  num_classes: 48\n")
    cfg = load_config(path, ["train.lr=1e-4", "model.learned_sigma=true", "train.betas=[0.9, 0.99]",
                             "data.frames=8"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 7  # untouched keys of the same section survive
    assert cfg.model.learned_sigma is True and cfg.conditions.num_classes == 48
    assert cfg.train.betas == (0.9, 0.99) and isinstance(cfg.train.betas, tuple)
    assert cfg.data.frames == 8


def test_later_override_wins():
    assert load_config(overrides=["train.steps=5", "train.steps=9"]).train.steps == 9


def test_override_into_a_scalar_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="^name: expected a string"):
        load_config(overrides=["name.sub=1"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(write_yaml(tmp_path / "n.yaml", "name: x\n"), ["name.sub=1"])


def test_override_with_unknown_key_suggests():
    with pytest.raises(ConfigError, match=r"did you mean 'train\.lr'"):
        load_config(overrides=["train.lrr=0.1"])


def test_data_argument_merges_section_by_section(tmp_path):
    path = write_yaml(tmp_path / "m.yaml", "train:\n  lr: 0.5\n  steps: 7\n")
    cfg = load_config(path, data={"train": {"steps": 3}})
    assert cfg.train.steps == 3 and cfg.train.lr == 0.5


# ------------------------------------------------------------------ files

def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write_yaml(tmp_path / "bad.yaml", "train: [1, 2\n"))
    assert "not valid YAML" in str(e.value) and "\n" not in str(e.value)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write_yaml(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path / "empty.yaml", "")) == RunConfig()


@pytest.mark.parametrize("overrides,match", [
    (["sample.steps=1001"], r"sample\.steps=1001 is more than diffusion\.num_timesteps=1000"),
    (["train.sample_steps=5000"], r"train\.sample_steps=5000"),
    # old key names on purpose: a saved config with a bad variant must fail to load, not crash later
    (["model.variant=true"], r"model\.variant: True is not one of"),
    (["model.variant=1.0"], r"model\.variant: 1\.0 is not one of"),
])
def test_settings_that_would_fail_mid_run_are_refused_up_front(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=overrides)


@pytest.mark.parametrize("key", ["conditions.num_classes", "model.num_classes"])  # the new key and the old one
def test_a_class_count_that_does_not_fit_moving_shapes_is_refused_before_the_run_starts(tmp_path, key):
    """The dataset knows its class count, so the Trainer (not load_config) refuses a model with
    another one, before any model is built or the run directory is written."""
    from moviola.training.trainer import Trainer

    cfg = load_config(overrides=[f"{key}=4", "train.device=cpu"])
    with pytest.raises(ConfigError, match=r"conditions\.num_classes=4 does not fit Moving Shapes, which has 48 "):
        Trainer(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_relative_paths_are_stored_absolute(tmp_path, monkeypatch):
    """A checkpoint's config must find its VAE and data from any working directory."""
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [8, 8]}))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(overrides=["autoencoder.kind=frame_vae", "autoencoder.path=vae", "model.patch_size=1",
                                 "data.dataset=folder", "data.root=clips"])
    assert cfg.autoencoder.path == str(tmp_path / "vae") and cfg.data.root == str(tmp_path / "clips")


# ------------------------------------------------------------------ renamed keys (configs written before the move)

# every key that moved, old dotted name -> new dotted name, with a value that is not the default
# (so loading it under either name is visible in the RunConfig)
RENAMED = [
    ("model.variant", 3, "model.layout", "factorized_attention"),
    ("model.num_classes", 48, "conditions.num_classes", 48),
    ("model.caption_channels", 24, "conditions.text_channels", 24),
    ("model.context_frames", True, "conditions.context_frames", True),
    ("model.class_dropout_prob", 0.2, "conditions.label_dropout", 0.2),
    ("model.context_dropout_prob", 0.3, "conditions.context_dropout", 0.3),
    ("text.dropout_prob", 0.15, "conditions.text_dropout", 0.15),
    ("train.context_mode", "prefix", "conditions.context_mode", "prefix"),
]


@pytest.fixture()
def notes(monkeypatch, capsys):
    """stderr of what follows, with the loader's once-per-process memory of notes cleared (another test
    may have loaded the same keys already)."""
    from moviola.config import loader

    monkeypatch.setattr(loader, "_NOTED", set())
    capsys.readouterr()
    return lambda: capsys.readouterr().err


def as_yaml(pairs) -> str:
    tree: dict = {}
    for dotted, value in pairs:
        section, key = dotted.split(".")
        tree.setdefault(section, {})[key] = value
    return yaml.safe_dump(tree)


def test_old_keys_in_a_file_load_to_the_same_config_as_the_new_keys(tmp_path, notes):
    new = load_config(write_yaml(tmp_path / "new.yaml", as_yaml((n, nv) for _, _, n, nv in RENAMED)))
    assert notes() == ""  # the new names are silent
    old = load_config(write_yaml(tmp_path / "old.yaml", as_yaml((o, ov) for o, ov, _, _ in RENAMED)))
    assert old == new
    # the values arrived under their new names (not the defaults)
    c = new.conditions
    assert new.model.layout == "factorized_attention"
    assert (c.num_classes, c.text_channels, c.context_frames, c.label_dropout, c.context_dropout, c.text_dropout,
            c.context_mode) == (48, 24, True, 0.2, 0.3, 0.15, "prefix")
    lines = notes().splitlines()
    assert len(lines) == 1, lines
    assert "old.yaml" in lines[0]
    for old_key, _, new_key, _ in RENAMED:
        assert f"{old_key} → {new_key}" in lines[0]
    load_config(tmp_path / "old.yaml")
    assert notes() == ""  # once per file and process: a pipeline reads its config more than once


def test_old_keys_as_overrides_load_to_the_same_config_as_the_new_keys(tmp_path, notes):
    new = load_config(overrides=[f"{n}={json.dumps(v)}" for _, _, n, v in RENAMED])
    assert notes() == ""
    old = load_config(overrides=[f"{o}={json.dumps(v)}" for o, v, _, _ in RENAMED])
    assert old == new
    lines = notes().splitlines()
    assert len(lines) == 1, lines
    assert all(new_key in lines[0] for _, _, new_key, _ in RENAMED)
    # a file with the new names and an old name on the command line: the same again
    path = write_yaml(tmp_path / "half.yaml", as_yaml((n, v) for _, _, n, v in RENAMED[1:]))
    assert load_config(path, ["model.variant=3"]) == new


@pytest.mark.parametrize("variant,layout", [(1, "interleaved"), (2, "late_fusion"), (3, "factorized_attention"),
                                            (4, "factorized_heads")])
def test_each_old_variant_number_is_its_layout(variant, layout, notes):
    assert load_config(overrides=[f"model.variant={variant}"]).model.layout == layout
    assert "model.variant → model.layout" in notes()


def test_an_old_checkpoint_config_json_loads_with_its_old_keys(tmp_path, notes):
    """A config.json saved beside a checkpoint before the move still rebuilds the same run."""
    new = load_config(overrides=[f"{n}={json.dumps(v)}" for _, _, n, v in RENAMED])
    tree = to_dict(new)
    for old_key, old_value, new_key, _ in RENAMED:  # write it back as the old code did
        (new_section, new_name), (old_section, old_name) = new_key.split("."), old_key.split(".")
        del tree[new_section][new_name]
        tree[old_section][old_name] = old_value
    del tree["conditions"]  # now empty: the old code had no such section
    assert "layout" not in tree["model"] and tree["model"]["variant"] == 3
    (tmp_path / "config.json").write_text(json.dumps(tree))
    notes()
    assert config_from_json(tmp_path / "config.json") == new
    assert len(notes().splitlines()) == 1


@pytest.mark.parametrize("text", ["[1, 2]", "3", "\"model\"", "null"])
def test_a_saved_config_that_is_not_a_mapping_is_a_config_error(tmp_path, text):
    """A damaged config.json beside a checkpoint is a one-line ConfigError (moviola: error: ...), not a crash
    inside the renamed-key migration."""
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match="mapping"):
        config_from_json(tmp_path / "config.json")


@pytest.mark.parametrize("old_key,old_value,new_key,new_value", [
    ("model.variant", 1, "model.layout", "late_fusion"),  # variant 1 is interleaved
    ("model.num_classes", 47, "conditions.num_classes", 48),
    ("model.caption_channels", 16, "conditions.text_channels", 24),
    ("model.context_frames", False, "conditions.context_frames", True),
    ("model.class_dropout_prob", 0.25, "conditions.label_dropout", 0.2),
    ("model.context_dropout_prob", 0.35, "conditions.context_dropout", 0.3),
    ("text.dropout_prob", 0.05, "conditions.text_dropout", 0.15),
    ("train.context_mode", "ends", "conditions.context_mode", "prefix"),
])
def test_an_old_key_and_its_new_key_set_to_different_values_is_an_error_naming_both(old_key, old_value, new_key,
                                                                                    new_value):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"{old_key}={json.dumps(old_value)}", f"{new_key}={json.dumps(new_value)}"])
    assert old_key in str(e.value) and new_key in str(e.value)


@pytest.mark.parametrize("old_key,old_value,new_key,new_value", RENAMED)
def test_an_old_key_and_its_new_key_set_to_the_same_value_load(old_key, old_value, new_key, new_value):
    cfg = load_config(overrides=[f"{old_key}={json.dumps(old_value)}", f"{new_key}={json.dumps(new_value)}"])
    assert cfg == load_config(overrides=[f"{new_key}={json.dumps(new_value)}"])


@pytest.mark.parametrize("bad", [5, 0, -1, "two"])
def test_an_unknown_variant_number_is_a_clear_error(bad):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"model.variant={json.dumps(bad)}"])
    msg = str(e.value)
    assert msg.startswith(f"model.variant: {bad!r} is not one of [1, 2, 3, 4]"), msg
    assert "model.layout" in msg and all(name in msg for name in
                                         ("interleaved", "late_fusion", "factorized_attention", "factorized_heads"))
    assert "\n" not in msg


# ------------------------------------------------------------------ families: keys and conditions

def test_an_unknown_model_key_names_the_family():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["model.window_size=8"])
    assert "model.window_size" in str(e.value) and "is not a latte key" in str(e.value)


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    """A second family's config, registered only inside the test below."""

    family: Literal["fake"] = "fake"
    window_size: int = 4


def test_a_key_of_another_family_names_that_family(monkeypatch):
    """With a second family registered, a key of that family on a latte config says whose key it is,
    and a latte key on that family's config says it is a latte key."""
    from moviola.config import models
    from moviola.config.models import model_config_from_dict

    monkeypatch.setitem(models.MODEL_CONFIGS, "fake", FakeConfig)
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["model.window_size=8"])
    msg = str(e.value)
    assert "model.window_size" in msg and "is not a latte key" in msg and "it is a fake key" in msg
    assert "model.family" in msg  # how to use that family
    with pytest.raises(ConfigError) as e:
        model_config_from_dict({"family": "fake", "layout": "interleaved"})
    assert "is not a fake key" in str(e.value) and "it is a latte key" in str(e.value)
    assert model_config_from_dict({"family": "fake", "window_size": 8}) == FakeConfig(window_size=8)


@pytest.mark.parametrize("condition", ["fps", "image", "low_res", "noise_level"])
def test_a_condition_the_family_does_not_take_names_the_condition_and_the_family(condition):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"conditions.{condition}=true"])
    msg = str(e.value)
    assert f"'{condition}'" in msg and "latte" in msg


def test_self_conditioning_is_a_condition_latte_does_not_take():
    with pytest.raises(ConfigError, match=r"latte.*'self_cond'"):
        load_config(overrides=["conditions.self_cond=0.5"])


def test_the_conditions_latte_takes_load():
    cfg = load_config(overrides=["conditions.num_classes=48", "conditions.text_channels=24",
                                 "conditions.context_frames=true"])
    assert cfg.conditions.wanted() == ["labels", "text", "context_frames"]


def test_an_autoencoder_run_is_not_held_to_the_model_sections_rules():
    """A VAE run ignores model: (a patch size that does not divide the frame is no reason to refuse it),
    and a denoiser's train.stage makes no sense for it."""
    base = ["train.task=autoencoder", "autoencoder.kind=causal_vae", "data.frames=17", "model.patch_size=8",
            "data.size=32", "autoencoder.channel_mults=[1,2,2,2]", "autoencoder.temporal_downsample=[true,true,false]"]
    load_config(overrides=base)  # 32 is not a multiple of 8 × 8, which a diffusion run on this VAE would refuse
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(overrides=[*base, "train.task=diffusion"])
    with pytest.raises(ConfigError, match="train.stage=temporal"):
        load_config(overrides=[*base, "train.stage=temporal"])
