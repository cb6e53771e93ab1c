"""``moviola convert``: foreign checkpoints in (official Latte, official VideoCrafter, diffusers Latte, a diffusers
U-Net as Video LDM) and a diffusers Latte out."""
from __future__ import annotations

import argparse

from moviola.cli.common import check_output


def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("convert", help="import or export weights: official Latte .pt, diffusers Latte, diffusers U-Net")
    csub = c.add_subparsers(dest="source", required=True)
    co = csub.add_parser("latte-official", help="an official Latte .pt (ffs, sky, taichi, ucf101) -> a checkpoint dir")
    co.add_argument("src", help="the .pt file ({'ema', 'model'} or a bare state dict)")
    co.add_argument("out", help="output checkpoint directory (config.json + model.safetensors)")
    co.add_argument("--vae", required=True, help="the diffusers AutoencoderKL directory it was trained with "
                    "(the release's vae/ folder); only its config.json is read here")
    co.add_argument("--num-heads", type=int, help="attention heads (default: those of the named size of its width)")
    co.add_argument("--config", help="take data/diffusion/train/sample settings from this YAML (e.g. "
                    "configs/latte/ffs.yaml); default: the paper's")
    co.set_defaults(fn=_cmd_convert)
    cd = csub.add_parser("diffusers-latte", help="a diffusers LatteTransformer3DModel directory -> a checkpoint dir")
    cd.add_argument("src", help="its save_pretrained directory (or a pipeline root with transformer/)")
    cd.add_argument("out", help="output checkpoint directory")
    cd.add_argument("--vae", help="the AutoencoderKL directory (default: vae/ beside transformer/)")
    cd.add_argument("--text-encoder", help="the T5 encoder directory (default: text_encoder/ beside transformer/, "
                                           "if there is one)")
    cd.set_defaults(fn=_cmd_convert)
    cu = csub.add_parser("diffusers-unet", help="a diffusers UNet2DConditionModel (Stable Diffusion) -> a Video LDM "
                         "checkpoint dir (the image model; add temporal layers with a temporal stage)")
    cu.add_argument("src", help="its save_pretrained directory (or a pipeline root with unet/)")
    cu.add_argument("out", help="output checkpoint directory")
    cu.add_argument("--vae", help="the AutoencoderKL directory (default: vae/ beside unet/)")
    cu.add_argument("--text-encoder", help="the text encoder directory (default: text_encoder/ beside unet/, if any)")
    cu.add_argument("--temporal-layers", default="none", choices=["none", "conv_attention", "attention", "conv"],
                    help="write fresh temporal layers too (they start at zero: the output is the image model's)")
    cu.set_defaults(fn=_cmd_convert)
    c3 = csub.add_parser("diffusers-unet3d", help="a diffusers UNet3DConditionModel (ModelScope T2V, zeroscope) -> a "
                         "VideoCrafter checkpoint dir (temporal convolutions, temporal transformers, transformer_in)")
    c3.add_argument("src", help="its save_pretrained directory (or a pipeline root with unet/)")
    c3.add_argument("out", help="output checkpoint directory")
    c3.add_argument("--vae", help="the AutoencoderKL directory (default: vae/ beside unet/)")
    c3.add_argument("--text-encoder", help="the text encoder directory (default: text_encoder/ beside unet/, if any)")
    c3.set_defaults(fn=_cmd_convert)
    cv = csub.add_parser("videocrafter", help="an official VideoCrafter checkpoint (VC1 T2V 512/1024, VC1 I2V "
                         "512, VC2 T2V model.ckpt) -> a VideoCrafter checkpoint dir")
    cv.add_argument("src", help="the official model.ckpt (a Lightning state_dict, or a bare lvdm UNetModel state dict)")
    cv.add_argument("out", help="output checkpoint directory (config.json + model.safetensors)")
    cv.add_argument("--vae", required=True, help="the SD VAE as a diffusers AutoencoderKL directory (the checkpoint's "
                    "first_stage_model is not converted); only its config.json is read here")
    cv.add_argument("--config", help="the official inference YAML (configs/inference_t2v_512_v2.0.yaml): its "
                    "unet_config and schedule, checked against the weights (default: what the weights show)")
    cv.add_argument("--text-encoder", help="a transformers CLIP text encoder directory (OpenCLIP ViT-H-14's), used "
                    "at its penultimate layer with 77 tokens")
    cv.set_defaults(fn=_cmd_convert)
    cs = csub.add_parser("swap-spatial", help="a Video LDM with its spatial layers (U-Net, embeddings) taken from "
                         "another video_ldm checkpoint, e.g. a personalized image model (the paper's DreamBooth transfer)")
    cs.add_argument("video", help="the video_ldm video model (checkpoint or run directory): config and temporal layers")
    cs.add_argument("image", help="a video_ldm checkpoint of the same spatial architecture (an image model, or "
                    "another video model: its temporal layers are ignored): the spatial layers")
    cs.add_argument("out", help="output checkpoint directory (config.json + model.safetensors + export.json)")
    cs.add_argument("--weights", choices=["ema", "model"], default="ema",
                    help="each checkpoint's EMA weights or its raw model weights (an export has one set)")
    cs.set_defaults(fn=_cmd_convert)
    ce = csub.add_parser("to-diffusers", help="a text-conditioned moviola Latte -> a LatteTransformer3DModel directory")
    ce.add_argument("src", help="a checkpoint directory or a run directory")
    ce.add_argument("out", help="output directory (config.json + diffusion_pytorch_model.safetensors)")
    ce.add_argument("--weights", choices=["ema", "model"], default="ema",
                    help="a training checkpoint's EMA weights or its raw model weights")
    ce.set_defaults(fn=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from moviola import interop as convert

    check_output(args.out, "", directory=True)
    if args.source == "latte-official":
        out = convert.convert_official(args.src, args.out, vae=args.vae, num_heads=args.num_heads,
                                       base_config=args.config)
    elif args.source == "diffusers-unet":
        out = convert.import_diffusers_unet(args.src, args.out, vae=args.vae, text_encoder=args.text_encoder,
                                            temporal_layers=args.temporal_layers)
    elif args.source == "diffusers-unet3d":
        out = convert.import_diffusers_unet3d(args.src, args.out, vae=args.vae, text_encoder=args.text_encoder)
    elif args.source == "videocrafter":
        notes: list[str] = []
        out = convert.convert_videocrafter(args.src, args.out, vae=args.vae, config=args.config,
                                           text_encoder=args.text_encoder, notes=notes)
        for note in notes:
            print(f"note: {note}")
    elif args.source == "swap-spatial":
        from moviola.interop.swap_spatial import swap_report

        out = convert.swap_spatial(args.video, args.image, args.out, weights=args.weights)
        report = swap_report(out)
        print(f"swapped {report['swapped_spatial_tensors']} spatial tensors from {args.image}; kept "
              f"{report['kept_temporal_tensors']} temporal tensors of {args.video}")
    elif args.source == "diffusers-latte":
        out = convert.import_diffusers(args.src, args.out, vae=args.vae, text_encoder=args.text_encoder)
    else:
        from moviola.io.checkpoint import check_kind

        check_kind(args.src, ("diffusion",), "a moviola diffusion model")
        out = convert.export_diffusers(args.src, args.out, weights=args.weights)
    print(f"wrote {out}")
    return 0
