"""Exact denoisers of Gaussian toy data, one network for every objective."""

from __future__ import annotations

import math

from torch import Tensor, nn

from diffusion_lab.diffusion.objectives import EDMObjective, EpsilonObjective, FlowObjective, Objective, VObjective
from diffusion_lab.diffusion.schedules import cosine

#: The toy data: x_0 ~ N(mu_y, S^2) per pixel, mu_y = MU0 + MU_STEP * y.
MU0, MU_STEP, S = -0.5, 0.1, 0.2


def toy_objectives(timesteps: int = 1000) -> dict[str, Objective]:
    """One objective of each kind (eps and v on a cosine schedule of ``timesteps``)."""
    return {
        "eps": EpsilonObjective(cosine(timesteps)),
        "v": VObjective(cosine(timesteps)),
        "flow": FlowObjective(),
        "edm": EDMObjective(),
    }


class GaussianDenoiser(nn.Module):
    """The exact network of ``objective`` for data N(mu_y, S^2): what a perfectly trained U-Net outputs.

    The input is ``a x_0 + b eps`` with (a, b) from the objective's definition at the network time;
    ``E[x_0 | x] = mu + a S^2 / (a^2 S^2 + b^2) (x - a mu)``, and the output is the objective's target
    written with that x_0 and the matching eps. A correct sampler driven by it draws N(mu_y, S^2).
    """

    null_class = 10

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, x: Tensor, time: Tensor, labels: Tensor, styles: Tensor | None = None) -> Tensor:
        o = self.objective
        time = time.float().view(-1, 1, 1, 1)
        mu = (MU0 + MU_STEP * labels.float()).view(-1, 1, 1, 1)
        if o.name in ("eps", "v"):
            sigma = o.sigma(time.flatten()).view(-1, 1, 1, 1)
            a = 1 / (1 + sigma**2).sqrt()
            b = a * sigma
        elif o.name == "flow":
            a, b = 1 - time / 1000, time / 1000
        else:
            low, high = math.log(o.sigma_min), math.log(o.sigma_max)
            sigma = (low + time / 1000 * (high - low)).exp()
            c_skip, c_out, c_in = o.preconditioning(sigma)
            a, b = c_in, c_in * sigma
        x0 = mu + a * S**2 / (a**2 * S**2 + b**2) * (x - a * mu)
        eps = (x - a * x0) / b.clamp(min=1e-12)
        if o.name == "eps":
            return eps
        if o.name == "v":
            return a * eps - b * x0
        if o.name == "flow":
            return eps - x0
        return (x0 - c_skip * (x / c_in)) / c_out
