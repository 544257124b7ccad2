# placeholder until the distill stage lands (issue 2)
class DistillConfig:  # noqa: D101
    pass


class DistillResult:  # noqa: D101
    pass


class LoraSettings:  # noqa: D101
    pass


def distill(*a, **k):
    raise NotImplementedError


def shrink(*a, **k):
    raise NotImplementedError
