"""Shared fixtures: tiny models built once per session, and one local Ray."""

from __future__ import annotations


import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    from pipelines.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from pipelines.config import RayConfig
    from pipelines.ray_runner import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()
