"""Look inside a trained model: arrays only.

Each module computes numpy arrays from a model and tensors; ``cnnlab.plots`` turns them into figures and
``cnnlab.report`` writes the pictures, their ``.npz`` files and the HTML page. Nothing here imports matplotlib or
the training loop.

| module | what |
|---|---|
| ``images`` | pick images of a run's test or training set by index (raw uint8 and normalized) |
| ``activations`` | the activation output of any named layer, chunked, side-effect free |
| ``filters`` | per map, an input found by gradient ascent that maximizes the map's mean activation |
| ``patterns`` | per class, the mean activation of every map; the nearest-class-pattern classifier |
| ``evaluation`` | accuracy, loss, per-class accuracy, confusion matrix, confident mistakes |
| ``saliency`` | gradient saliency and Grad-CAM |
"""

CHUNK = 256  # images per forward pass: bounds memory to one chunk's activations (Conv2D_1 of seed: 22 MB)
