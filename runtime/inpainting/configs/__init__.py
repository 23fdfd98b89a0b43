"""Component configs and tokenizer files shipped for offline single-file checkpoint loading."""
