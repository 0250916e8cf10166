"""Writes the tiny example datasets the CPU configs use (run from this folder): the synthetic tasks of
`shusheng.tuner.data.synthetic`."""

from pathlib import Path

from shusheng.tuner.data.synthetic import color_records, parity_pairs, write_jsonl

HELD_OUT = [n for n in range(100) if n // 10 in (3, 7)]  # every last digit also appears in training


def main(folder: Path = Path(__file__).parent) -> None:
    write_jsonl(folder / "colors.jsonl", color_records(240, seed=0))
    write_jsonl(folder / "parity_train.jsonl", parity_pairs([n for n in range(100) if n not in HELD_OUT]))
    write_jsonl(folder / "parity_eval.jsonl", parity_pairs(HELD_OUT))


if __name__ == "__main__":
    main()
