"""Train feedback policies with ctpg's gradient estimators.

    import agents
    result = agents.train(env="diffdrive", estimator="ctpg", iters=300, logdir="runs/dd", seed=0)
    result.policy, result.history, result.run_dir
    policy = agents.load_policy("runs/dd")      # later: the trained policy, ready to call
    agents.train(env="diffdrive", batch_size=4096, nproc=2)   # data-parallel (agents.distributed)

The command line (`ctpg train`, `ctpg eval`, `ctpg sweep`, `ctpg bench`) is agents/cli.py; per-environment
defaults live in agents/config.py; TensorBoard tags in agents/logging.py (TAGS).
"""
from agents.config import ENV_DEFAULTS, TrainConfig, resolve_config
from agents.policies import MLP, AngleFeatures, FeatureMap, Linear, Squash, make_policy
from agents.replay import evaluate_run, load_policy
from agents.trainer import TrainResult, train

__all__ = ["ENV_DEFAULTS", "TrainConfig", "resolve_config", "MLP", "AngleFeatures", "FeatureMap",
           "Linear", "Squash", "make_policy", "TrainResult", "train", "load_policy", "evaluate_run"]
