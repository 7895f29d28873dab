"""Dataset ingest and the chunked Zarr image store."""
