"""Numbers and figures: σ_label and purity (`metrics`), the `evaluate` stage, figures, the
latent browser, the `render` stage, the paper's values and `revelio compare` (`paper_values`,
`compare`), and `revelio check-metrics` (`reproduce`)."""
