"""Text and sentence-vector tools (MODELS.md A5, H)."""
from kexue.models.text.similarity import cosine_spearman, rankdata, spearman
from kexue.models.text.whitening import Whitening

__all__ = ["Whitening", "cosine_spearman", "rankdata", "spearman"]
