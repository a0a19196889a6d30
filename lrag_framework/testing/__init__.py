"""The plugin author's test kit: the plugin contracts of ``lrag_framework.interfaces`` as check
functions, and hypothesis strategies to drive them. No pytest plugin: call them from any test.

    from lrag_framework.testing import check_retriever

    def test_my_retriever_keeps_the_contract():
        check_retriever(lambda: MyRetriever(MyParams()), exact=True)

Needs hypothesis: ``pip install 'lrag-framework[testing]'``. The checks raise AssertionError
naming the broken rule. Hypothesis-driven checks use the active hypothesis profile's
``max_examples`` unless given ``max_examples``.
"""
try:
    import hypothesis  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("lrag_framework.testing needs hypothesis: "
                      "pip install 'lrag-framework[testing]'") from exc

from . import strategies
from .backbones import check_backbone, sliding_window_reference
from .embedders import check_embedder
from .losses import check_loss
from .retrievers import check_retriever, measure_recall, reference_search

__all__ = ["check_backbone", "check_embedder", "check_loss", "check_retriever",
           "measure_recall", "reference_search", "sliding_window_reference", "strategies"]
