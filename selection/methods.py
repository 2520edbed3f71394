"""The ways ``select`` scores a pairing, as data (the CLI takes its choices from here)."""

#: protocol -> (train_split, select_split, eval_split)
PROTOCOLS = {"upper-bound": ("test", "test", "test"), "traditional": ("train", "val", "test")}
#: --method: the trained upper bound (F1), training-free LogME, or both.
METHODS = ("upper-bound", "logme", "both")
