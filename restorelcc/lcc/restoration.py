"""``Restoration``: a trained (or training-free) set of per-head compensations.

It is what ``restore`` returns and what an adapter file holds: the selected heads, their
directions ``V^T`` and coefficients ``beta, b``, the hyper-parameters, and the fingerprint of
the pruned model it was made for. It can be attached to that model unfolded (hooks), folded
into its ``o_proj`` biases, saved as a small adapter, or exported as a merged checkpoint.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from restorelcc.errors import NonFiniteError, RestoreLCCError
from restorelcc.hf.families import (
    HeadGeometry,
    decoder_layers,
    family_of,
    head_geometry,
    model_device,
    o_proj_of,
)
from restorelcc.lcc.compat import describe_geometry
from restorelcc.lcc.fingerprint import ModelFingerprint, model_fingerprint
from restorelcc.lcc.fold import fold_offsets
from restorelcc.lcc.heads import (
    HeadCompensation,
    check_heads,
    compensation_vectors,
    o_proj_input_offsets,
    scatter_heads,
)

# The methods a restoration can come from, and which of beta and b each one trains.
TRAINED_TENSORS = {
    "restorelcc": ("beta", "b"),
    "restorelcc-random-heads": ("beta", "b"),
    "lofit": ("b",),
    "training-free": (),
}
METHODS = tuple(TRAINED_TENSORS)


class AdapterError(RestoreLCCError):
    """A restoration adapter that is missing, malformed, or of an unknown format."""


class AdapterMismatchError(AdapterError):
    """A restoration applied to a model other than the pruned model it was made for."""


def check_made_for(
    model: nn.Module,
    geometry: HeadGeometry,
    fingerprint: ModelFingerprint | None,
    subject: str,
) -> None:
    """Raise ``AdapterMismatchError`` unless ``model`` has ``geometry`` and (unless
    ``fingerprint`` is None) the pruned weights ``fingerprint`` was taken of; the message
    names what differs, after ``subject`` (what was made for the model)."""
    found = head_geometry(model)
    if found != geometry:
        raise AdapterMismatchError(
            f"{subject} is for {describe_geometry(geometry)}, the model has "
            f"{describe_geometry(found)}"
        )
    problems = [] if fingerprint is None else fingerprint.differences(model_fingerprint(model))
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise AdapterMismatchError(
            f"{subject} was made for a different pruned model: {'; '.join(problems[:3])}{more}"
        )


@dataclass
class Restoration:
    """Per-head compensation ``c = V^T beta + b`` for ``heads [S, 2]`` (layer, head).

    ``directions [S, d, d]``, ``beta [S, d]``, ``b [S, d]``: fp32. ``scores [L, H]``: the
    probe accuracies when heads were probed (LoFiT: its scales' L2 norms). ``method``:
    one of ``METHODS`` (``restorelcc``, ``restorelcc-random-heads``, ``training-free``,
    ``lofit``).

    Raises ``AdapterError`` for a shape or method that does not fit and ``NonFiniteError``
    for an inf/NaN in ``directions``, ``beta``, ``b`` or ``scores`` (which would fold into
    NaN biases).
    """

    model_type: str
    geometry: HeadGeometry
    heads: torch.Tensor
    directions: torch.Tensor
    beta: torch.Tensor
    b: torch.Tensor
    fingerprint: ModelFingerprint
    method: str = "restorelcc"
    hyperparameters: dict = field(default_factory=dict)
    scores: torch.Tensor | None = None
    report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # On the CPU like the other tensors, also when made from a module on a GPU.
        self.heads = check_heads(self.heads, self.geometry).cpu()
        s, d = self.heads.shape[0], self.geometry.head_dim
        for name, shape in (("directions", (s, d, d)), ("beta", (s, d)), ("b", (s, d))):
            value = getattr(self, name)
            if tuple(value.shape) != shape:
                raise AdapterError(f"{name} must be {list(shape)}, got {list(value.shape)}")
            setattr(self, name, value.detach().float().cpu())
        if self.scores is not None:
            shape = (self.geometry.layers, self.geometry.heads)
            if tuple(self.scores.shape) != shape:
                raise AdapterError(
                    f"scores must be [layers, heads] = {list(shape)}, got {list(self.scores.shape)}"
                )
            self.scores = self.scores.detach().float().cpu()
        for name in ("directions", "beta", "b", "scores"):
            _check_finite(getattr(self, name), name)
        if self.method not in METHODS:
            raise AdapterError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if not isinstance(self.fingerprint, ModelFingerprint):
            raise AdapterError(
                f"fingerprint must be a ModelFingerprint (model_fingerprint(model)), got "
                f"{type(self.fingerprint).__name__}"
            )

    @classmethod
    def from_compensation(
        cls, module: HeadCompensation, model_type: str, fingerprint: ModelFingerprint, **fields
    ) -> Restoration:
        return cls(
            model_type=model_type,
            geometry=module.geometry,
            heads=module.heads.clone(),
            directions=module.directions.clone(),
            beta=module.beta.detach().clone(),
            b=module.b.detach().clone(),
            fingerprint=fingerprint,
            **fields,
        )

    @property
    def trainable_parameters(self) -> int:
        """The parameters its method trained: ``beta`` and ``b`` (``2 * head_dim`` per
        selected head) for RestoreLCC, ``b`` alone for LoFiT, none for training-free
        (whose ``b`` is computed and whose ``beta`` is stored as zeros)."""
        trained = TRAINED_TENSORS[self.method]
        return sum(getattr(self, name).numel() for name in trained)

    def per_head(self) -> torch.Tensor:
        """``c [S, d]`` fp32."""
        return compensation_vectors(self.beta, self.directions, self.b)

    def layer_offsets(self) -> torch.Tensor:
        """``[L, H*d]`` fp32: what is added to each layer's ``o_proj`` input."""
        return scatter_heads(self.geometry, self.heads, self.per_head())

    def check_model(self, model: nn.Module) -> None:
        """Raise ``AdapterMismatchError`` unless ``model`` is the pruned model this
        restoration was made for: its family and geometry, the sparsity mask of every block
        linear, and every parameter's values up to what a change of dtype explains (see
        ``restorelcc.lcc.fingerprint``). The message names what differs."""
        family = family_of(model).model_type
        if family != self.model_type:
            raise AdapterMismatchError(
                f"restoration is for a {self.model_type} model, got a {family} model"
            )
        check_made_for(model, self.geometry, self.fingerprint, "restoration")

    @contextlib.contextmanager
    def attached(self, model: nn.Module, check: bool = True):
        """Run ``model`` with the compensation added at ``o_proj``'s input (unfolded)."""
        if check:
            self.check_model(model)
        # On the model's device once, not copied from the host at every forward.
        offsets = self.layer_offsets().to(model_device(model))
        with o_proj_input_offsets(model, lambda layer: offsets[layer]):
            yield model

    def fold(self, model: nn.Module, check: bool = True) -> nn.Module:
        """Fold into ``model``'s ``o_proj`` biases in place (weights untouched); returns it.

        The folded model is for use in memory: its config still says that ``o_proj`` has
        no bias, so ``model.save_pretrained`` writes biases that transformers drops on
        loading (and ``load_model`` refuses, ``CheckpointError``). To save a folded model,
        call ``export_merged`` on the pruned model instead (before folding)."""
        if check:
            self.check_model(model)
        fold_offsets(model, self.layer_offsets())
        return model

    @contextlib.contextmanager
    def folded(self, model: nn.Module, check: bool = True):
        """``fold`` for the duration, in place (no copy of the model); ``model``'s ``o_proj``
        biases (or their absence) come back exactly on exit."""
        if check:
            self.check_model(model)
        layers = range(len(decoder_layers(model)))
        saved = []
        for layer in layers:
            bias = o_proj_of(model, layer).bias
            saved.append(None if bias is None else bias.detach().clone())
        try:
            yield self.fold(model, check=False)
        finally:
            with torch.no_grad():
                for layer, bias in zip(layers, saved, strict=True):
                    o_proj = o_proj_of(model, layer)
                    if bias is None:
                        o_proj.bias = None
                    else:
                        o_proj.bias.copy_(bias)

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Save as an adapter: the folder ``directory`` (a leading ``~`` expanded) gets
        ``adapter.safetensors`` (``heads [S, 2]``, ``directions [S, d, d]``, ``beta [S,
        d]``, ``b [S, d]``, ``scores [L, H]`` if any, the fingerprint's sketches) and
        ``adapter.json`` (method, family, geometry, fingerprint, hyper-parameters,
        report), written atomically; ``Restoration.load(directory)`` reads it back.
        Returns the directory.

        A non-empty ``directory`` is refused (``FileExistsError``) unless ``overwrite``,
        which replaces the whole folder, deleting everything in it: so it replaces only a
        previous adapter folder (one holding ``adapter.json``) and refuses any other
        non-empty folder even then. See ``restorelcc.lcc.adapter.save_adapter``."""
        from restorelcc.lcc.adapter import save_adapter

        return save_adapter(self, directory, overwrite)

    @classmethod
    def load(cls, directory: str | Path) -> Restoration:
        from restorelcc.lcc.adapter import load_adapter

        return load_adapter(directory)

    def export_merged(
        self,
        model: nn.Module,
        directory: str | Path,
        tokenizer=None,
        overwrite: bool = False,
        check: bool = True,
    ) -> Path:
        """Save the pruned ``model`` (not folded; left unchanged) with this restoration
        folded in, as a checkpoint that plain transformers and ``load_model`` read: the
        way to save a folded model (``save_pretrained`` after ``fold`` writes biases that
        transformers drops). Pass ``tokenizer`` for a folder that ``load_model`` opens as
        it is. ``overwrite`` replaces the whole folder, and only a previous merged export.
        See ``restorelcc.lcc.adapter.export_merged``."""
        from restorelcc.lcc.adapter import export_merged

        return export_merged(self, model, directory, tokenizer, overwrite, check)

    def summary(self) -> dict:
        return {
            "method": self.method,
            "model_type": self.model_type,
            "selected_heads": int(self.heads.shape[0]),
            "total_heads": self.geometry.total_heads,
            "trainable_parameters": self.trainable_parameters,
            "fingerprint": self.fingerprint.digest,
        }


def _check_finite(values: torch.Tensor | None, name: str) -> None:
    """``NonFiniteError`` naming ``name``, its inf/NaN count and the first one's index."""
    if values is None:
        return
    bad = ~torch.isfinite(values)
    if bad.any():
        first = bad.nonzero()[0].tolist()
        raise NonFiniteError(
            f"{name} holds {int(bad.sum())} non-finite value(s) (inf/NaN), the first at "
            f"index {first}"
        )
