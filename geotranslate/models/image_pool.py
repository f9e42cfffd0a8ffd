"""History buffer of generated images (Shrivastava et al. 2017, used by CycleGAN).

Training the discriminator on a mix of current and older fakes reduces oscillation. The pool
draws from its own seeded ``torch.Generator`` so runs are reproducible, and its state
(images + RNG) is plain tensors, so it fits a ``torch.load(weights_only=True)`` checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch


class ImagePool:
    """Keep up to ``size`` past images; ``query`` returns a mix of new and stored ones.

    While the pool fills, new images are stored and returned as-is. Once full, each image is
    returned with probability 0.5; otherwise a random stored image is returned in its place
    and the new one takes its slot. ``size=0`` disables the pool (pure passthrough).
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _random_index(self) -> int:
        return int(torch.randint(0, len(self.images), (), generator=self.generator))

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch of the same shape mixing ``images`` with stored history.

        The result is detached: it feeds the discriminator update only.
        """
        if self.size == 0:
            return images
        returned: list[torch.Tensor] = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                returned.append(image)
            elif self._uniform() > 0.5:
                slot = self._random_index()
                stored = self.images[slot].to(device=image.device, dtype=image.dtype)
                self.images[slot] = image.clone()
                returned.append(stored)
            else:
                returned.append(image)
        return torch.cat(returned, dim=0)

    def state_dict(self) -> dict[str, Any]:
        """Images (on CPU) and RNG state, all tensors/ints: safe for ``weights_only`` loading."""
        return {
            "size": self.size,
            "images": [image.detach().cpu() for image in self.images],
            "rng_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a pool saved by :meth:`state_dict` (the size must match)."""
        if int(state["size"]) != self.size:
            raise ValueError(f"pool size mismatch: saved {state['size']}, this pool {self.size}")
        images = list(state["images"])
        if len(images) > self.size:
            raise ValueError(f"saved pool holds {len(images)} images, more than size {self.size}")
        self.images = [torch.as_tensor(image).clone() for image in images]
        self.generator.set_state(torch.as_tensor(state["rng_state"], dtype=torch.uint8).clone())
