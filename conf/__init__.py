"""The configs of ttm-experiments (conf/ of the repository), installed as the package `ttm_experiments.conf`."""
