"""Dataset preparation and LoRA training for background inpainting."""
