"""Datasets: registry datasets, image folders and their checks → `data/<dataset>/` (images,
manifest.csv, classes.txt); the image decoding and conversion rules (`images`)."""
