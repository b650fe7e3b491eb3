"""Error types. Every `FerryError` is bad input or usage: the CLI prints its message as one line
and exits 2. Anything else escaping the library is an internal error (exit 1)."""


class FerryError(Exception):
    """Bad input: the message names the file, tensor or field and says what is wrong."""


class CheckpointError(FerryError):
    """A checkpoint on disk is malformed, incomplete, or has tensors we do not expect."""


class SpecError(FerryError):
    """A model configuration field is missing, inconsistent, or out of range."""


class UnsupportedError(FerryError):
    """A valid input that ferry does not (yet) convert: a model family, layout or option."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for something outside the allow-list; nothing from it was run."""


class OutputExistsError(FerryError):
    """The output path exists and --overwrite was not given."""

