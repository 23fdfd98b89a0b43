"""Pure torch/numpy runtime of ComfyUI-Backdrop. Never imports ComfyUI."""
