"""The feature store and what fills it: the Zarr store (`store`), the staged shard writer
(`staging`), the sample order and views (`views`), the `encode` and `extract` stages' work,
the backbone a key's params describe (`backbone`), readers for training (`loaders`) and
`revelio store` (`inspect`)."""
