"""Text and sentence-vector tools (MODELS.md A5, H): BERT-whitening, CoSENT, bi- and
cross-encoders for sentence matching, threshold search, STS-B evaluation."""
from kexue.models.text.biencoder import BiEncoder, ConvEncoder, build_biencoder, pool
from kexue.models.text.cosent import cosent_loss, cosent_loss_dense, pair_cosine, reference_cosent_loss
from kexue.models.text.crossencoder import CrossEncoder
from kexue.models.text.pairs import PairData, score_pairs, train_pairs
from kexue.models.text.similarity import cosine_spearman, rankdata, spearman
from kexue.models.text.stsb import StsPairs, evaluate_sts, load_sts_dir, load_sts_tsv, spearman_eval
from kexue.models.text.threshold import ThresholdResult, best_threshold
from kexue.models.text.vocab import Vocabulary, tokenize
from kexue.models.text.whitening import Whitening

__all__ = [
    "BiEncoder",
    "ConvEncoder",
    "CrossEncoder",
    "PairData",
    "StsPairs",
    "ThresholdResult",
    "Vocabulary",
    "Whitening",
    "best_threshold",
    "build_biencoder",
    "cosent_loss",
    "cosent_loss_dense",
    "cosine_spearman",
    "evaluate_sts",
    "load_sts_dir",
    "load_sts_tsv",
    "pair_cosine",
    "pool",
    "rankdata",
    "reference_cosent_loss",
    "score_pairs",
    "spearman",
    "spearman_eval",
    "tokenize",
    "train_pairs",
]

from kexue.models.text.unilm import UniLM  # noqa: E402  (registers "unilm")

__all__ += ["UniLM"]
