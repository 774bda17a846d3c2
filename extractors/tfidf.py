"""Text features without a pretrained model: TF-IDF of word n-grams, projected by a truncated SVD.

A cheap, fair baseline that runs offline on real text (e.g. the real MELD transcripts). It is the
first extractor with a fit step (`extractors.base`): the vocabulary, the idf weights and the SVD
projection are learned from the **train split only**. The extract stage hands `fit_inputs` nothing
but train rows, so a dev or test utterance never adds a term, changes an idf weight or moves a
component; their features are made with the train-fitted state, like any unseen text.

Input is the utterance's own text (no dialogue context: the dialogue model adds context itself, and
an utterance-level feature is the comparable baseline). The fit sees the train texts exactly as
`encode` sees them, sorted so the fit does not depend on manifest order. Defaults are the setting
measured on the real MELD CSVs (`../shared/data/README.md`): word 1-2 grams, min_df 2, sublinear tf,
100 SVD components (there: test weighted F1 0.409 with an utterance-level logistic regression).

Each feature is the l2-normalised tf-idf row times the SVD components, computed row by row with a
sparse product, so it does not depend on the batch it was encoded in. Empty text has no feature
(missing `empty_text`); a text none of whose terms is in the vocabulary gets the zero vector and the
flag `no_known_terms`. A `width` larger than the fit can give (at most min(train texts, terms)
components) is a one-line error, never a silently narrower feature.

The fit is deterministic: a fixed `seed` for the randomized SVD, and one BLAS thread for it, since
dense BLAS sums in an order that depends on the thread count (another `OPENBLAS_NUM_THREADS` moved the
last bits of the components). Encoding uses no dense BLAS, so the features follow from the saved
state exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from extractors.base import Decoded, Decoder, Encoded, Extractor, ExtractorConfig, FittedState, register_extractor
from extractors.text import utterance_text  # the text one row is encoded from, and fitted on
from pipeline.core.errors import PipelineError
from pipeline.core.params import ParamError

# TfidfVectorizer settings that are fixed here (recorded in the fitted state, so a state is self-describing)
FIXED_SETTINGS = {"lowercase": True, "token_pattern": r"(?u)\b\w\w+\b", "norm": "l2", "use_idf": True,
                  "smooth_idf": True}


@dataclass
class TfidfConfig(ExtractorConfig):
    """params.yaml `extract.<set>` with `extractor: tfidf`."""

    width: int = 100  # SVD components: the feature's size
    ngram_max: int = 2  # word n-grams of 1..ngram_max words
    min_df: int = 2  # a term must occur in at least this many train texts
    sublinear_tf: bool = True  # term frequency as 1 + log(tf)
    max_features: int | None = None  # keep only the most frequent terms; null = all
    seed: int = 0  # TruncatedSVD's random_state
    batch_size: int = 256  # rows per sparse product (no effect on the values)
    num_workers: int = 0  # decoding is a string copy: worker processes only cost start-up time

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("width", "ngram_max", "min_df"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.max_features is not None and self.max_features < 1:
            raise ParamError("max_features", f"must be at least 1 or null, got {self.max_features}")


class TfidfDecoder(Decoder):
    """Row -> its text; nothing to load, so it pickles trivially."""

    def __call__(self, row: dict[str, Any]) -> Decoded:
        text = utterance_text(row)
        if not text:
            return Decoded(row["utterance_id"], missing="empty_text")
        return Decoded(row["utterance_id"], data=text)


@register_extractor
class TfidfExtractor(Extractor):
    """TF-IDF (word 1..ngram_max grams) + TruncatedSVD to `width`, fitted on the train split only."""

    name = "tfidf"
    modality = "text"
    version = "1"
    config_class = TfidfConfig
    needs_fit = True
    fit_needs = "a non-empty text"

    def __init__(self, config: TfidfConfig, raw_root: Path, device: torch.device) -> None:
        super().__init__(config, raw_root, device)
        self._vectorizer: Any = None  # a TfidfVectorizer with the fitted vocabulary and idf
        self._projection: np.ndarray | None = None  # [V, width] float64

    @property
    def model_id(self) -> str:
        return "fitted on the train split"

    @property
    def model_sha256(self) -> str:
        return ""  # no pretrained weights: the fitted state is the model, hashed by the store

    # ---- the fit step ----
    def fit_inputs(self, train_rows: Sequence[dict[str, Any]]) -> list[str]:
        return sorted(text for text in map(utterance_text, train_rows) if text)

    def _vectorizer_for(self, settings: dict[str, Any], vocabulary: dict[str, int] | None = None) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(
            lowercase=settings["lowercase"], token_pattern=settings["token_pattern"], norm=settings["norm"],
            use_idf=settings["use_idf"], smooth_idf=settings["smooth_idf"], sublinear_tf=settings["sublinear_tf"],
            ngram_range=tuple(settings["ngram_range"]), min_df=settings["min_df"],
            max_features=settings["max_features"], vocabulary=vocabulary, dtype=np.float64,
        )

    def fit(self, inputs: list[str]) -> FittedState:
        from sklearn.decomposition import TruncatedSVD

        config: TfidfConfig = self.config  # type: ignore[assignment]
        settings = {**FIXED_SETTINGS, "ngram_range": [1, config.ngram_max], "min_df": config.min_df,
                    "max_features": config.max_features, "sublinear_tf": config.sublinear_tf}
        vectorizer = self._vectorizer_for(settings)
        try:
            matrix = vectorizer.fit_transform(inputs)
        except ValueError as exc:  # e.g. "After pruning, no terms remain"
            raise PipelineError(
                f"extract.text: the tfidf vocabulary of the {len(inputs)} train texts is empty ({exc}); "
                f"lower extract.text.min_df (now {config.min_df})"
            ) from None
        limit = min(matrix.shape)
        if config.width > limit:
            raise PipelineError(
                f"extract.text.width={config.width} is more than the tfidf fit can give: the train split has "
                f"{matrix.shape[0]} texts and {matrix.shape[1]} terms (min_df {config.min_df}), so at most "
                f"{limit} components; lower extract.text.width"
            )
        svd = TruncatedSVD(n_components=config.width, algorithm="randomized", random_state=config.seed)
        # one BLAS thread: a multi-threaded matrix product sums in a thread-count-dependent order, so the
        # components (and every feature) would differ between machines (~0.3 s more on real MELD)
        with threadpool_limits(limits=1, user_api="blas"):
            svd.fit(matrix)
        terms = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)  # column order
        return FittedState(
            info={"vocabulary": terms, "settings": settings, "width": config.width,
                  "svd": {"algorithm": "randomized", "random_state": config.seed}},
            tensors={
                "idf": torch.from_numpy(vectorizer.idf_.astype(np.float32)),
                "components": torch.from_numpy(svd.components_.astype(np.float32)),
            },
        )

    def load_fitted(self, state: FittedState) -> None:
        terms = state.info["vocabulary"]
        components = state.tensors["components"].to(torch.float64).numpy()
        if components.shape != (state.info["width"], len(terms)) or state.tensors["idf"].shape != (len(terms),):
            raise PipelineError(
                f"tfidf fitted state: components {tuple(components.shape)} and idf {tuple(state.tensors['idf'].shape)} "
                f"do not fit a vocabulary of {len(terms)} terms and width {state.info['width']}"
            )
        vectorizer = self._vectorizer_for(state.info["settings"], {term: i for i, term in enumerate(terms)})
        vectorizer.idf_ = state.tensors["idf"].to(torch.float64).numpy()
        self._vectorizer = vectorizer
        self._projection = np.ascontiguousarray(components.T)

    # ---- encoding ----
    def size_hint(self, row: dict[str, Any]) -> float:
        return len(row.get("text") or "")

    def decoder(self) -> TfidfDecoder:
        return TfidfDecoder()

    def encode(self, batch: list[Decoded]) -> list[Encoded]:
        if self._vectorizer is None or self._projection is None:
            raise RuntimeError("TfidfExtractor.encode before load_fitted: the extract stage fits it first")
        rows = self._vectorizer.transform([d.data for d in batch])  # sparse, l2-normalised per row
        # sparse x dense: each output row is summed from its own row's terms alone (batch-independent)
        features = np.asarray(rows @ self._projection, dtype=np.float32)
        terms_per_row = np.diff(rows.indptr)
        return [
            Encoded(d.utterance_id, torch.from_numpy(features[i].copy()),
                    flags=list(d.flags) + ([] if terms_per_row[i] else ["no_known_terms"]))
            for i, d in enumerate(batch)
        ]
