"""Other libraries' formats: k-SAEs for SAELens and sparsify (`saes`)."""
