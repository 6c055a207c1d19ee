"""Real photographs for the tests: scikit-image's and scikit-learn's bundled sample images."""
from __future__ import annotations

from typing import Dict

import numpy as np
import pytest


def sample_photos() -> Dict[str, np.ndarray]:
    """Six colour photographs (H x W x 3 uint8, 300-640 px): astronaut, cat, coffee, rocket, China, flower."""
    skimage_data = pytest.importorskip("skimage.data")
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(skimage_data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    china, flower = load_sample_images().images
    photos.update(china=china, flower=flower)
    return photos
