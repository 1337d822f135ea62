"""locca: LocCa / Cap / CapPa pretraining and PaLI-style transfer in JAX."""

from locca import quiet as _quiet

_quiet.quiet_accelerator_probe()  # before TensorFlow is imported (see locca/quiet.py)
_quiet.quiet_gin_search_probes()
