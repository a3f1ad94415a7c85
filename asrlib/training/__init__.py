"""The trainer, its data pipeline and the duration-bucketed sampler."""
