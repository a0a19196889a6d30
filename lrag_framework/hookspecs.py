"""The whole plugin API of lrag-framework: one hook per plugin kind.

A plugin is a module named by an entry point in the ``lrag_framework`` group. It imports
``hookimpl`` from ``lrag_framework`` and implements any of the hooks below. Each hook receives a
``register(name, factory, params_model=None)`` callback:

- ``name``: the component's name in configs (``{name: ..., params: ...}``);
- ``factory``: a class or function called as ``factory(params)`` with the validated params model
  (as ``factory()`` when there is no params model), returning the component (checked against its
  interface from ``lrag_framework.interfaces``);
- ``params_model``: a pydantic model of the params (``None``: the component takes none).

A plugin module may declare ``LRAG_API_VERSION = <int>``; a plugin declaring another major version
than ``API_VERSION`` is reported and not loaded. Keep heavy imports (torch models) inside the
factories so listing plugins stays fast.
"""
import pluggy

API_VERSION = 1

hookspec = pluggy.HookspecMarker("lrag_framework")
hookimpl = pluggy.HookimplMarker("lrag_framework")


@hookspec
def register_backbones(register):
    """Register Backbone factories (AR video generators)."""


@hookspec
def register_retrievers(register):
    """Register Retriever factories (top-K search over a stream's frame descriptors)."""


@hookspec
def register_embedders(register):
    """Register Embedder factories (clean latent frames -> retrieval descriptors)."""


@hookspec
def register_losses(register):
    """Register Loss factories (embedder training objectives)."""
