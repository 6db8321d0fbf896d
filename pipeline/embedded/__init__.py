"""The embedded default model `fmnist-ddpm`: a small pixel-space DDPM the `model` stage trains
on Fashion-MNIST on CPU, so the whole study runs offline (`train`)."""
