from moviola.conditioning.base import NULL_LABEL, Conditioning, check_accepted
from moviola.conditioning.image import (CLIPImageEncoder, ImageEncoderError, build_image_encoder,
                                        image_encoder_fingerprint)

__all__ = ["CLIPImageEncoder", "Conditioning", "ImageEncoderError", "NULL_LABEL", "build_image_encoder",
           "check_accepted", "image_encoder_fingerprint"]
