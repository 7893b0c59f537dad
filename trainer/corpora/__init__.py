"""Offline byte-level corpora built from Debian and PyPI packages.

Reading API used by the trainer: `open_split`, `manifest`, `default_root`.
"""
from trainer.corpora.store import CorpusError, default_root, documents, manifest, open_split

__all__ = ["CorpusError", "default_root", "documents", "manifest", "open_split"]
