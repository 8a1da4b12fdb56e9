"""kdlib: the small PyTorch library behind the knowledge-distillation course.

Modules, each named for what it holds:

- ``kdlib.losses``   response-based losses: softmax with temperature, ``kd_loss``, logit matching,
                     decoupled KD (``dkd_loss``)
- ``kdlib.features`` feature taps (forward hooks), FitNets hints, attention transfer
- ``kdlib.relations`` relation-based losses: RKD (distances, angles), similarity-preserving
- ``kdlib.multi_teacher``, ``kdlib.online``, ``kdlib.self_distill``: several teachers, deep
                     mutual learning, born-again generations
- ``kdlib.data``     the embedded digits dataset, torchvision datasets, transfer-set helpers
- ``kdlib.models``   MLPs, small CNNs and the CIFAR ResNets of the KD literature
- ``kdlib.lm``       language models: per-token KD losses, sequence-level and on-policy KD
- ``kdlib.vit``      a small vision transformer with DeiT's distillation token, ``deit_loss``
- ``kdlib.export``   ONNX export, ONNX Runtime on the CPU, int8 quantisation (``export`` extra)
- ``kdlib.distill``  ``freeze``, ``train_supervised``, ``Distiller``
- ``kdlib.training`` what the training loops share: the first-batch check, Adam, checkpoints
- ``kdlib.logit_cache`` ``TeacherLogitCache``: the teacher's logits, computed once per sample
- ``kdlib.distributed`` torchrun helpers: process group, rank, sharding, all-reduce (DDP)
- ``kdlib.metrics``  ``evaluate``, accuracy, per-class recall, confusion matrix, agreement,
                     calibration, teacher-to-student KL
- ``kdlib.efficiency`` parameters, latency, throughput and activation memory
- ``kdlib.exercises`` ``blocked``: graded tests switch off kdlib's own version of an exercise
- ``kdlib.examples``  runnable scripts (``python -m kdlib.examples.ddp``)
- ``kdlib.runtime``  ``setup``: the device, seeds, the CPU thread policy (by model size);
                     when progress bars show
- ``kdlib.teacher_cache`` ``train_teacher``: a *trained teacher* kept on disk, loaded after

The course machinery (``kdlib course run``, ``kdlib grade``, ``kdlib release``, the results files
the notebooks write) is the subpackage ``kdlib.course``; it needs the ``course`` extra, and no
module above imports it.
"""

__version__ = "0.1.0"
