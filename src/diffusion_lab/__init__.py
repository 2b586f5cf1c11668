"""diffusion-lab: class-conditioned diffusion models on MNIST and Fashion-MNIST."""

__version__ = "0.1.0"
