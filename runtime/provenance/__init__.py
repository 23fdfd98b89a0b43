"""Signed, hash-chained provenance ledger, signing keys and C2PA manifests."""
