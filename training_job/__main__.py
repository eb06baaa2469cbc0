"""``python -m training_job [--once | --watch] ...`` (see training_job.cli)."""

from training_job.cli import get_args_parser, main

if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
