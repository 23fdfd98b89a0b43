"""Background inpainting with diffusers + peft LoRAs, keeping product pixels bit-exact."""
