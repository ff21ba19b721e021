"""``python -m passthru`` and the ``passthru`` console script."""

import sys


def main() -> None:
    from .service.fastpath import fast_main

    rc = fast_main(sys.argv[1:])  # plain JSON listings skip the CLI framework (see service/fastpath.py)
    if rc is None:
        from .cli import main as cli_main

        rc = cli_main()
    sys.exit(rc)


if __name__ == "__main__":
    main()
