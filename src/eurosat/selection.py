"""Which epoch's weights are best.ckpt (--select): the highest val_acc, or the lowest val_loss, a tie broken by the
other metric, a full tie keeping the earlier epoch. Pure functions: the run, its summary and the tests share them."""

SELECTION_METRICS = ("val_acc", "val_loss")


def rank(record: dict, select: str) -> tuple[float, float]:
    """Greater is better: the selected metric first, the other one for ties."""
    if select == "val_loss":
        return (-record["val_loss"], record["val_acc"])
    return (record["val_acc"], -record["val_loss"])


def best(history: list[dict], select: str) -> dict | None:
    """The selected epoch: max() keeps the first of equal ranks, so a full tie keeps the earlier epoch."""
    return max(history, key=lambda record: rank(record, select), default=None)


def improves(record: dict, history: list[dict], select: str) -> bool:
    """Whether an epoch's record ranks above every earlier one (strictly: a tie keeps the earlier epoch)."""
    previous = best(history, select)
    return previous is None or rank(record, select) > rank(previous, select)
