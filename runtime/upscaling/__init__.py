"""Super-resolution after generation, and the second paste-back of the exact product.

Generation can run at a reduced working size (a 3000 px photo generated at 1024 px): :func:`upscale` brings the
result to the delivered size, with a spandrel model from ``models/upscale_models`` (:func:`load_upscaler`) or plain
Lanczos without weights; :func:`paste_back` then puts the full-resolution original product back, so the delivered
image's product pixels are the input's, bit for bit.
"""

from .loader import Upscaler, load_upscaler
from .paste_back import paste_back
from .resize import lanczos, target_size, upscale
from .second_pass import UPSCALE_TO, restore_full_resolution, shrink_for_generation, working_size

__all__ = ["UPSCALE_TO", "Upscaler", "lanczos", "load_upscaler", "paste_back", "restore_full_resolution",
           "shrink_for_generation", "target_size", "upscale", "working_size"]
