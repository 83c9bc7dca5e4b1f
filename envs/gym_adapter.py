"""gymnasium adapter (work in progress: owned by the envs/gymnasium helper)."""


def register_gym_envs() -> None:
    pass
