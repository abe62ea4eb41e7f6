"""Triton's ``reshape``: a model whose own tensor shapes differ from the dims its clients use.

A config may give an input or output a ``reshape`` (:class:`gateway.repository.config.TensorConfig`):
the shape the model itself takes or gives, without the batch dim. Clients send and receive the
config's ``dims``; :class:`ReshapedBackend` wraps a loaded instance and reshapes each input to the
model's dims before it runs and each output back to the config's dims after, keeping the batch dim.
The elements and their order are kept (numpy's reshape, a view where it can be).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from backends import Backend, InferenceInputError


class ReshapedBackend(Backend):
    """A loaded instance with some inputs and outputs reshaped between the config's dims and the model's.

    Args:
        instance: the loaded instance; its :attr:`inputs` and :attr:`outputs` are the model's own.
        input_dims: per input to reshape, the model's dims (without the batch dim).
        output_dims: per output to reshape, the config's dims (without the batch dim).
        batched: whether the first dim of every tensor is the batch (``max_batch_size > 0``); it is kept.
    """

    def __init__(
        self,
        instance: Backend,
        input_dims: Mapping[str, Sequence[int]],
        output_dims: Mapping[str, Sequence[int]],
        batched: bool,
    ) -> None:
        self.instance = instance
        self.platform = instance.platform
        self._inputs = instance.inputs
        self._outputs = instance.outputs
        self._input_dims = {name: tuple(dims) for name, dims in input_dims.items()}
        self._output_dims = {name: tuple(dims) for name, dims in output_dims.items()}
        self._batched = batched

    @property
    def metadata_parameters(self) -> dict[str, Any]:
        """The wrapped instance's."""
        return self.instance.metadata_parameters

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Reshape the inputs to the model's dims, run the instance, reshape its outputs to the config's dims.

        Raises:
            InferenceInputError: an input's elements do not fit the model's dims (a variable dim of
                another length than the reshape allows), or whatever the instance raises.
            RuntimeError: an output's elements do not fit the config's dims.
        """
        feeds = dict(inputs)
        for name, dims in self._input_dims.items():
            try:
                feeds[name] = self._reshape(feeds[name], dims)
            except ValueError:
                raise InferenceInputError(
                    f"input '{name}' of shape {list(feeds[name].shape)} cannot be reshaped to the model's "
                    f"dims {list(dims)}" + (" (batch dim kept)" if self._batched else "")
                ) from None
        outputs = self.instance.run(feeds, output_names)
        for name, dims in self._output_dims.items():
            if name in outputs:
                try:
                    outputs[name] = self._reshape(outputs[name], dims)
                except ValueError:
                    raise RuntimeError(
                        f"output '{name}' of shape {list(outputs[name].shape)} cannot be reshaped to dims {list(dims)}"
                    ) from None
        return outputs

    def _reshape(self, array: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
        return array.reshape((array.shape[0], *dims) if self._batched else dims)
