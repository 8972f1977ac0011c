"""Package layout; the metadata lives in pyproject.toml.

`conf/` stays at the top of the repository and ships inside the package as `ttm_experiments.conf`
(every `*.yaml` below it, recursively), so a wheel or `pip install git+...` carries the configs and an
editable install (`make setup`) maps the package onto the repository's folder: edits show at once.
This file exists because pyproject.toml cannot combine `packages.find` with a package mapped onto
another folder.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=find_namespace_packages(include=["ttm_experiments*", "hydra_plugins*"], exclude=["*.__pycache__"])
    + ["ttm_experiments.conf"],
    package_dir={"ttm_experiments.conf": "conf"},
    package_data={"ttm_experiments.conf": ["**/*.yaml"]},
    include_package_data=False,
)
