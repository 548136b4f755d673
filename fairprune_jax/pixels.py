"""Images on the device: uint8 pixels normalised once per channel (`normalize`), or kept as uint8 and normalised
when a batch is read (`Pixels`, 4x less device memory for large datasets).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

@jax.jit
def _normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    return (images.astype(jnp.float32) * (1.0 / 255.0) - mean) / std


def _check_uint8(images: Any, who: str) -> None:
    dtype = np.dtype(images.dtype) if hasattr(images, "dtype") else np.asarray(images).dtype
    if dtype != np.uint8:
        raise ValueError(f"images: dtype {dtype}; {who} expects uint8 pixels 0-255 (rescale other data to "
                         f"0-255 and cast, e.g. np.round(x * 255 / x_max).astype(np.uint8))")


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """(x/255 − mean)/std per channel, computed once on the device as float32 (one fused kernel; the uint8
    images travel to the device, not the 4x larger floats). `images` must be uint8 pixels (0–255)."""
    _check_uint8(images, "normalize")
    return _normalize(jnp.asarray(images), jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Pixels:
    """uint8 images [N, H, W, C] that read as their normalised float32: indexing returns (x/255 − mean)/std of the
    selected rows, the very expression `normalize` computes (bit-identical values).

    A training set kept this way takes a quarter of the memory of its floats on every device it is replicated to;
    `train.fit` and the protocols gather each batch from it and normalise it inside the compiled step. A pytree
    (its arrays are leaves), so it passes through `jit`, `vmap` and `device_put` like an array."""

    pixels: jax.Array
    mean: jax.Array
    std: jax.Array
    dtype: ClassVar[np.dtype] = np.dtype(np.float32)  # what indexing returns

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def __getitem__(self, index: Any) -> jax.Array:
        return _normalize(self.pixels[index], self.mean, self.std)

    def __jax_array__(self) -> jax.Array:
        return self[...]


def pixels(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Pixels:
    """uint8 images on the device, normalised when read (`Pixels`); the checks of `normalize`."""
    _check_uint8(images, "pixels")
    return Pixels(jnp.asarray(images), jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))


def device_images(images: Any) -> jax.Array | Pixels:
    """Model inputs on the device: `Pixels` as they are (normalised when read), anything else as a jax array."""
    return images if isinstance(images, Pixels) else jnp.asarray(images)
