"""Diff-C, the light-weight classifier on feature maps: the model (`model`), its training loop
(`train`), the `fit_diffc` stage (`fit`), and `revelio classify` for new images (`classify`)."""
