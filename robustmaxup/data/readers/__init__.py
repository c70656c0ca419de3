"""Dataset readers, one module per dataset family; nothing here downloads.

A reader is ``reader(spec, split, root, cache_dir) -> split object`` (``split`` is ``"train"``
or ``"test"``); each :class:`~robustmaxup.data.spec.DatasetSpec` in
:data:`~robustmaxup.data.registry.DATASETS` names its reader.

- :mod:`.digits`: scikit-learn's bundled 8x8 digits (no root).
- :mod:`.cifar`: CIFAR-10/100 from torchvision's python format, an ImageFolder tree, or a
  tarball of either (decoded once into the cache, :mod:`robustmaxup.data.cache`).
- :mod:`.imagenet`: ImageFolder ``train/`` and ``val/`` read lazily.
"""

from robustmaxup.data.readers.cifar import cifar_reader, read_cifar
from robustmaxup.data.readers.digits import read_digits
from robustmaxup.data.readers.imagenet import read_imagenet

__all__ = ["cifar_reader", "read_cifar", "read_digits", "read_imagenet"]
