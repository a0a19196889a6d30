"""Entry point of the built-in ``usearch`` retriever: an HNSW index per stream (usearch package).

Kept free of torch and usearch so listing plugins stays fast; the retriever is in
``usearch_retriever``.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lrag_framework import hookimpl

LRAG_API_VERSION = 2


class UsearchParams(BaseModel):
    """Params of the ``usearch`` retriever (HNSW names as in usearch / the HNSW paper)."""

    model_config = ConfigDict(extra="forbid")
    metric: Literal["cos", "ip"] = Field("cos", description="cosine or inner-product similarity")
    dtype: Literal["f32", "f16", "i8"] = Field(
        "f32", description="storage of vectors in the index; i8 quantises unit vectors (cos only)")
    connectivity: int = Field(16, ge=2, description="graph edges per node and layer (HNSW M)")
    expansion_add: int = Field(256, ge=1, description="search width while inserting "
                               "(efConstruction; 256, not usearch's 128: scene-clustered "
                               "descriptors need it, see docs/retrievers.md)")
    expansion_search: int = Field(64, ge=1, description="search width of queries (ef)")
    overfetch: float = Field(2.0, ge=1.0, description="first fetch = overfetch * k * frames / "
                             "eligible frames; doubled until k eligible ids are found")
    threads: int = Field(0, ge=0, description="usearch worker threads for add (0: all cores)")

    @model_validator(mode="after")
    def _i8_needs_cos(self):
        if self.dtype == "i8" and self.metric != "cos":
            raise ValueError(f"dtype 'i8' quantises unit-norm vectors, so it ranks by cosine: use "
                             f"metric 'cos' (got metric {self.metric!r})")
        return self


def build_usearch(params: UsearchParams):
    from .usearch_retriever import UsearchRetriever

    return UsearchRetriever(params)


@hookimpl
def register_retrievers(register):
    register("usearch", build_usearch, UsearchParams)
