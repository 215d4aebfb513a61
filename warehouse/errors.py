"""Errors of the money path, in a module light enough for the CLI to import at start."""


class PriceError(ValueError):
    """A price book entry that cannot be used, or a model/date the book has no price for."""


class ConservationError(RuntimeError):
    """The lines of a period do not add up to the capacity they bill: never write such a ledger."""


class CloseError(RuntimeError):
    """A close that must not happen (month not over, closed month with changed inputs)."""


MONEY_ERRORS = (PriceError, ConservationError, CloseError)


class LakeError(RuntimeError):
    """The lake cannot be used (an object store's bucket missing, credentials refused): said at start,
    in one line naming the lake's path."""
