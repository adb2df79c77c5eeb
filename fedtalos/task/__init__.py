"""The learning task, without Flower: CIFAR-100 (``cifar``), its split and client shards (``partition``), batches
and augmentation (``batches``), the timm model (``model``, ``backbones``), devices, precision and out-of-memory
errors (``device``), the per-process resources of a run (``resources``), the train/eval loops (``train``) and
learning-rate schedules (``lr_schedule``)."""
