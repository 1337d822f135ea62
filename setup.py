"""locca: location-aware visual pretraining (LocCa) and PaLI-style transfer in JAX."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax",
    "flax",
    "optax",
    "orbax-checkpoint",
    "seqio",
    "tensorflow-text",  # pulls the matching tensorflow; never add tensorflow-cpu beside it
    "tensorflow-datasets",
    "gin-config",
    "sentencepiece",
    "pycocoevalcap",
    "clu",
    "tensorboard",  # clu.metric_writers needs it for TensorBoard summaries
    "safetensors",
    "pillow",
    "numpy",
    "matplotlib",
    "tqdm",
]

setup(
    name="locca",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["locca*", "transfer*", "tasks*", "checkpoints*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "cpu": ["jax[cpu]"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
        "dev": ["pytest", "pytest-xdist", "ruff", "hypothesis"],
    },
)
