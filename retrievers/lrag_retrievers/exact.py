"""Entry point of the built-in ``exact`` retriever: brute-force top-K on the descriptors' device.

Kept free of torch so listing plugins stays fast; the retriever is in ``exact_retriever``.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lrag_framework import hookimpl

LRAG_API_VERSION = 2


class ExactParams(BaseModel):
    """Params of the ``exact`` retriever."""

    model_config = ConfigDict(extra="forbid")
    metric: Literal["cos", "ip"] = Field("cos", description="cosine or inner-product similarity")
    initial_capacity: int = Field(256, ge=1, description="frames per stream preallocated at the "
                                  "first add; doubled whenever a stream outgrows it")


def build_exact(params: ExactParams):
    from .exact_retriever import ExactRetriever

    return ExactRetriever(params)


@hookimpl
def register_retrievers(register):
    register("exact", build_exact, ExactParams)
