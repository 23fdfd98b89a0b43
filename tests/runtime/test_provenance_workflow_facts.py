"""Facts for provenance records read from a ComfyUI API-format prompt graph."""

from __future__ import annotations

from comfyui_backdrop.runtime.provenance.file_hashes import file_sha256, hash_named_files
from comfyui_backdrop.runtime.provenance.workflow_facts import workflow_facts

GRAPH = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15-inpaint.safetensors"}},
    "5": {"class_type": "LoraLoader", "inputs": {"lora_name": "glam.safetensors", "strength_model": 0.8,
                                                 "strength_clip": 1.0, "model": ["4", 0], "clip": ["4", 1]}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "amber bottle on travertine", "clip": ["5", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": ["12", 0], "clip": ["5", 1]}},
    "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "soft window light", "clip": ["5", 1]}},
    "9": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["8", 0]}},
    "10": {"class_type": "KSampler", "inputs": {"seed": ["11", 0], "steps": 20, "model": ["5", 0],
                                                "positive": ["9", 0], "negative": ["7", 0]}},
    "11": {"class_type": "PrimitiveInt", "inputs": {"value": 987654321}},
    "12": {"class_type": "PrimitiveString", "inputs": {"value": "blurry, text"}},
    "13": {"class_type": "VAELoader", "inputs": {"vae_name": "vae-ft-mse.safetensors"}},
    "20": {"class_type": "BackdropWatermark", "inputs": {"generation_seed": -1, "seed": 5, "image": ["10", 0]}},
}


def test_facts_from_a_graph():
    facts = workflow_facts(GRAPH)
    assert facts.models == {"sd15-inpaint.safetensors": "checkpoints", "vae-ft-mse.safetensors": "vae"}
    assert facts.loras == {"glam.safetensors": 0.8}
    assert facts.seeds == [987654321], "linked seeds are followed; our own nodes are skipped"
    assert facts.positive == ["amber bottle on travertine", "soft window light"]
    assert facts.negative == ["blurry, text"]


def test_malformed_graphs_give_empty_facts():
    for graph in (None, {}, [], {"1": "x"}, {"1": {"inputs": {"positive": ["99", 0], "seed": ["1", 0]}}}):
        facts = workflow_facts(graph)
        assert not (facts.models or facts.loras or facts.seeds or facts.positive or facts.negative)


def test_file_hashes(tmp_path):
    import hashlib

    path = tmp_path / "m.safetensors"
    path.write_bytes(b"weights" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert hash_named_files({"m": path, "missing": tmp_path / "none", "unknown": None}) == {
        "m": file_sha256(path), "missing": "", "unknown": ""}
