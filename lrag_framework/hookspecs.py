"""The whole plugin API of lrag-framework: one hook per plugin kind.

A plugin is a module named by an entry point in the ``lrag_framework`` group. It imports
``hookimpl`` from ``lrag_framework`` and implements any of the hooks below. Each hook receives a
``register(name, factory, params_model=None)`` callback:

- ``name``: the component's name in configs (``{name: ..., params: ...}``);
- ``factory``: a class or function called as ``factory(params)`` with the validated params model
  (as ``factory()`` when there is no params model), returning the component (checked against its
  interface from ``lrag_framework.interfaces``);
- ``params_model``: a pydantic model of the params (``None``: the component takes none).

A plugin module may declare ``LRAG_API_VERSION = <int>``: the API it was written for (default:
``API_VERSION``). A version in ``DEPRECATED_API_VERSIONS`` loads with a ``PluginWarning``
(``lrag plugins`` lists it), another one of ``SUPPORTED_API_VERSIONS`` loads as it is; any other
is reported and not loaded. Keep heavy imports (torch models) inside the factories so listing
plugins stays fast.

API 3 (from API 2) adds conditioned embedders, and nothing else changes, so API-2 plugins load
without a warning: ``Conditioning.frame_signals`` says what the conditioning implies about each
frame (the tiny backbone: the camera position), and an embedder with ``conditioned = True`` is
called as ``embed(latents, signals)``; the engine refuses it with a conditioning that has none.

API 2 (from API 1) states the contracts once, in ``lrag_framework.interfaces``, and enforces them:

- the engine checks every ``Retriever.search`` result (eligible ids, counts and padding, best
  first, finite scores) and stops with a ``ComponentError`` naming the component;
- a loss's weight is a framework field (``losses: [{name, weight, params}]``); the trainer no
  longer reads ``Loss.weight``. A config's ``params.weight`` (API 1) is moved to ``weight`` with a
  ``FutureWarning``;
- trainable embedders implement ``interfaces.TrainableEmbedder``; an API-1 embedder with a
  duck-typed ``model`` and ``save`` still trains, with a ``DeprecationWarning``;
- a bare name that a built-in also registers resolves to the built-in (was: an error).
API-1 plugins keep working unchanged apart from these, with a warning, until API 4 (announced
for API 3 at first; kept one version longer, as API 3 only adds).
"""
import pluggy

API_VERSION = 3
SUPPORTED_API_VERSIONS = (1, 2, 3)
DEPRECATED_API_VERSIONS = (1,)  # load with a warning

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
