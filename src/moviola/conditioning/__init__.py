from moviola.conditioning.base import NULL_LABEL, Conditioning, check_accepted

__all__ = ["Conditioning", "NULL_LABEL", "check_accepted"]
