"""Signed, hash-chained provenance ledger, signing keys and C2PA manifests.

keys.py            key store under the provenance home (ledger key, watermark secret, C2PA chain)
records.py         record fields, canonical hashing, watermark IDs, pixel hashes
ledger_chain.py    what every ledger backend shares: signing, hash chain, signed head, idempotency keys, verify
ledger.py          SQLite WAL ledger (the embedded default) and its witness file
ledger_postgres.py PostgreSQL ledger (psycopg 3) for many writers on many machines
ledger_backends.py open_ledger(location, keys): a postgresql:// URL or an SQLite file
c2pa_manifest.py   C2PA manifests with the watermark soft binding (c2pa-python)
workflow_facts.py  models, LoRAs, seeds and prompts read from a ComfyUI prompt graph
file_hashes.py     cached SHA-256 of model files

Marking and verifying images (codec + ledger + C2PA together) lives in runtime/watermark/service.py.
"""
