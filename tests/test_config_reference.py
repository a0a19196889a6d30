"""docs/config.md is generated from the pydantic schemas and must be current."""
from pathlib import Path

from lrag_framework.config_reference import render

DOC = Path(__file__).parents[1] / "docs" / "config.md"


def test_config_reference_is_current():
    assert DOC.read_text() == render(), (
        "docs/config.md is out of date: python -m lrag_framework.config_reference docs/config.md")


def test_config_reference_covers_every_schema_and_built_in():
    text = render()
    for needle in ("`retrieval.k`", "`memory.policy`", "`out_dir`", "`losses`", "`weight`",
                   "### retriever `usearch`", "`expansion_add`", "### backbone `tiny`",
                   "### loss `reconstruction`, `trajectory_smoothing`", "Takes no params."):
        assert needle in text, needle
