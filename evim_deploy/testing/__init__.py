"""What the test suite and the ``bench/`` scripts share: randomized models, real photos, the trained fixture.

* :mod:`.models`: :func:`randomized_model` and :func:`deploy_model`, built once per process;
* :mod:`.photos`: scikit-image's bundled photos as image folders (calibration, ``verify --images``);
* :mod:`.train_fixture`: EfficientViM ``tiny`` trained on scikit-learn's digits, its checkpoint, labels and
  image folders (retrain with ``python -m evim_deploy.testing.train_fixture``);
* :mod:`.scenes` and :mod:`.train_scenes`: the full-size fixture, M1 at 224x224 trained on digits composited onto
  photos: :func:`write_scene_folders` (held-out and calibration scenes) and :func:`scenes_trained_model`
  (retrain on a GPU with ``python -m evim_deploy.testing.train_scenes``).

scikit-learn and scikit-image are development dependencies, imported inside the functions that need them.
"""
from __future__ import annotations

from .models import deploy_model, randomized_model
from .photos import disjoint_calibration_photos, write_photos
from .scenes import trained_model as scenes_trained_model
from .scenes import write_image_folders as write_scene_folders

__all__ = ["deploy_model", "disjoint_calibration_photos", "randomized_model", "scenes_trained_model", "write_photos",
           "write_scene_folders"]
