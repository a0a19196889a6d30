"""The example package's components keep the lrag-framework contracts (lrag_framework.testing)."""
from lrag_framework.testing import check_backbone, check_retriever

from lrag_example_adapter import PatchParams, build_flat, build_patch


def test_flat_retriever_keeps_the_retriever_contract():
    check_retriever(build_flat, exact=True)


def test_patch_backbone_keeps_the_backbone_contract():
    check_backbone(lambda: build_patch(PatchParams()))
