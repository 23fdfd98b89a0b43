"""ComfyUI workflows outside ComfyUI: node specs, API/UI formats, validation and a small executor.

Pure Python: node classes are passed in by the caller, so nothing here imports ComfyUI or the nodes.
"""
