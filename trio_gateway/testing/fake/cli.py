"""`trio-gateway fake-provider` (placeholder: being built for issue 3)."""


def add_parser(sub) -> None:
    sub.add_parser("fake-provider", help="run a fake AI provider (not built yet)")
