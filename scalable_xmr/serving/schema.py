"""The HTTP contract of ``xmr serve``: request and answer bodies as pydantic models.

Every request body is parsed and checked here, by the schema, before any model code runs: an
unknown field, a wrong type, a non-finite number or a missing query is refused with the field's
name (``http.py`` turns the first error into a 4xx ``{"error": "<field>: ..."}`` body). What only
the run can check (a modality it lacks, a width, an id, a word not in the vocabulary, k above the
gallery size) is checked by ``service.Searcher`` and refused the same way.

A query is exactly one of:

- ``features``: one item's input features: a flat list of numbers (SDML, images, dense captions),
  or a list of region vectors for a region-feature image ``[[...], ...]``;
- ``id``: a stored test item of the query modality;
- ``text``: a caption as a string (token runs: tokenized as the dataset's converter did);
- ``tokens``: a caption as token ids of the run's vocabulary.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

# Finite numbers only (NaN, inf and -inf are refused by the schema; json accepts them as literals).
Finite = Annotated[float, Field(allow_inf_nan=False)]
# Bounds that keep one request's work small: a caption of 512 words, 4096 regions, k and depth
# up to a million (the gallery size, checked by the service, is the real bound).
MAX_TEXT = 4096
MAX_TOKENS = 512
MAX_K = 1_000_000
QUERY_FIELDS = ("features", "id", "text", "tokens")


class SearchRequest(BaseModel):
    """``POST /search``: one query, the modality it is in, and what to rank."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query_modality: StrictStr
    target_modality: StrictStr
    k: StrictInt = Field(10, ge=1, le=MAX_K)
    features: list[Finite] | list[list[Finite]] | None = Field(None, min_length=1, max_length=1 << 20)
    id: StrictStr | None = Field(None, min_length=1, max_length=1024)
    text: StrictStr | None = Field(None, max_length=MAX_TEXT)
    tokens: list[StrictInt] | None = Field(None, min_length=1, max_length=MAX_TOKENS)
    depth: StrictInt | None = Field(None, ge=1, le=MAX_K)  # MMCA two-stage search; None: exact

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        given = [name for name in QUERY_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(QUERY_FIELDS)} (got "
                             f"{', '.join(given) if given else 'none'})")
        if self.features and isinstance(self.features[0], list) and \
                len({len(r) for r in self.features}) != 1:
            raise ValueError("features: region vectors must all have one length")
        return self

    @property
    def query_field(self) -> str:
        return next(name for name in QUERY_FIELDS if getattr(self, name) is not None)


class Hit(BaseModel):
    """One ranked gallery item: its id and the model's score (higher is better)."""

    id: str
    score: float


class SearchAnswer(BaseModel):
    """``POST /search`` answer: the hits, best first, and how they were ranked."""

    hits: list[Hit]
    mode: str  # "exact (...)", "two-stage, approximate (...)", "faiss ivf (approximate)"
    gallery: str  # what was ranked: "stored test split" or "index <path>"


class ModalityInfo(BaseModel):
    """``GET /modalities``: what one modality's queries may be and what its gallery is."""

    accepts: dict[str, str]  # query field -> what it takes, e.g. {"features": "64 numbers"}
    gallery: str
    gallery_size: int
    searches: list[str]  # target modalities a query of this modality can rank


class ErrorAnswer(BaseModel):
    error: str
