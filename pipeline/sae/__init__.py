"""The k-sparse autoencoder: the model (`model`), its training loop (`train`), the pass over a
split that records each latent's firing and top images (`scan`), and the `fit_sae` stage (`fit`)."""
