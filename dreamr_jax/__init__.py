"""dreamr-jax: DREAM-R multimodal speculative reasoning in JAX/Flax NNX."""

__version__ = "0.1.0"
