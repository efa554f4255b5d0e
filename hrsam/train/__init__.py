"""Training: SAM distillation and click fine-tuning on one loop (docs/MODEL.md, training).

``python -m hrsam.train finetune|distill|plot`` (``cli``); the loop (``trainer``), its process
pieces (``runtime``), optimisation (``optim``), checkpoints (``state``), data batches (``batches``),
batched click simulation (``click_sim``), the two objectives (``finetune``, ``distill``) and the
metrics log (``metrics_log``). docs/TRAINING.md describes the commands and the recipes.
"""
