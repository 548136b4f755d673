"""Bias study on CelebA (paper 2): 40 attributes, protected Male / Young / Chubby / Pale_Skin (true labels),
official train / validation / test partition through TFDS (`celeb_a`; preparing it needs network access and
TensorFlow the first time: `pip install -e ".[tfds_full]"` and `--config.data.download=True`).

Variants:
- "" (reduced scale for one accelerator): ResNet18 at 64×64, 3 seeds, 10 epochs of paper-2 SGD, GMP post-training
  to 80–99.5% with Adam 1e-4.
- "paper": 224×224 inputs, 100 epochs, 5 warm-up epochs then cosine, batch 256, SGD lr .256, momentum .875, weight
  decay 3.05e-5 (docs/methods.md §6). Note: `train.fit` holds the whole training set on the device as float32, which
  at 224×224 is ~98 GB for CelebA's 162,770 training images; cap `data.max_train_examples` or use a
  streaming loader.
- "smoke": tiny images and an MLP, for the TFDS mock-data test.
"""
import ml_collections

from fairprune_jax.studies import schema


def _paper_sgd(lr: float = 0.256) -> ml_collections.ConfigDict:
    return schema.sgd(lr, momentum=0.875, weight_decay=3.05e-5)


def get_config(variant: str = ""):
    c = schema.bias_config("celeb_a")
    c.model = "resnet18"
    c.num_seeds = 3
    c.data.image_size = (64, 64)
    c.train.batch_size = 256
    c.train.optimizer = _paper_sgd()
    c.train.schedule.name = "cosine"
    c.train.schedule.warmup_epochs = 1
    c.train.epochs = 10
    c.finetune.batch_size = 256
    c.finetune.epochs = 4
    c.prune.sparsities = (0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
    c.eval.batch_size = 1000
    if variant == "paper":
        c.data.image_size = (224, 224)
        c.train.epochs = 100
        c.train.schedule.warmup_epochs = 5
        c.finetune.epochs = 10
    elif variant == "smoke":
        c.model = "mlp_100_30"
        c.data.image_size = (16, 16)
        c.train.batch_size = 16
        c.train.epochs = 1
        c.train.optimizer = _paper_sgd(0.05)
        c.train.schedule.name = "constant"
        c.train.schedule.warmup_epochs = 0
        c.finetune.batch_size = 16
        c.finetune.epochs = 1
        c.prune.sparsities = (0.5, 0.9)
        c.eval.batch_size = 256
    elif variant:
        raise ValueError(f"variant: unknown variant {variant!r}; use '', 'paper' or 'smoke'")
    c.variant = variant
    return c
