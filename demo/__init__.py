"""What the demo and the tests run on instead of downloads: tiny randomly-initialized models of the
real architectures (tiny_models) and a synthetic sample of audio and images (sample_data), both
built deterministically. `run_pipeline.py tiny-models` and `sample-data` write them; no pipeline
imports this package."""
