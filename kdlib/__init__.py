"""kdlib: the small PyTorch library behind the knowledge-distillation course.

Modules, each named for what it holds:

- ``kdlib.losses``   response-based losses: softmax with temperature, ``kd_loss``, logit matching
- ``kdlib.data``     the embedded digits dataset, torchvision datasets, transfer-set helpers
- ``kdlib.models``   MLPs, small CNNs and the CIFAR ResNets of the KD literature
- ``kdlib.distill``  device and seed helpers, ``freeze``, ``train_supervised``, ``Distiller``
- ``kdlib.metrics``  accuracy, agreement, calibration, teacher-to-student KL
- ``kdlib.report``   the small JSON files in which notebooks leave their headline figures
"""

__version__ = "0.1.0"
