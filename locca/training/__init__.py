"""The one trainer of locca (pretraining and PaLI transfer).

Modules: trainer (train loop, :func:`train`), step (jitted step, gradient
accumulation, bf16 compute), train_state, optimizers (Adafactor, AdamW,
make_optimizer), schedules, partitioning (mesh, logical axis rules),
checkpointing (orbax), writers (metrics.jsonl + TensorBoard).
"""
