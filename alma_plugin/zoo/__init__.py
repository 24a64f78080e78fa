"""Embedded models and data (like ``foolbox.zoo``), shipped in the package: nothing is
downloaded.

* :func:`load_smallcnn` — the paper's MNIST SmallCNN, ``"mnist_regular"``,
  ``"mnist_adversarial"`` (PGD-ℓ∞ trained) or ``"mnist_lagrangian"`` (Lagrangian-attack
  trained), in eval mode;
* :func:`load_mnist_heldout` — the 1000 MNIST test images 9000–9999 the models never saw
  (values in [0, 1], labels int64).

The models were trained by ``python -m alma_plugin.bench.train_mnist`` on the MNIST test
images 0–8999.

Example:
    >>> from alma_plugin.zoo import load_mnist_heldout, load_smallcnn
    >>> model = load_smallcnn("mnist_regular")
    >>> images, labels = load_mnist_heldout()
    >>> images.shape
    torch.Size([1000, 1, 28, 28])
"""

from .data import load_mnist_heldout
from .models import MODEL_NAMES, SmallCNN, load_smallcnn

__all__ = ["MODEL_NAMES", "SmallCNN", "load_mnist_heldout", "load_smallcnn"]
