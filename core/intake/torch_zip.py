"""Bounds on a torch.save archive before torch.load reads it: torch reads every record whole into memory (and would
inflate a deflated one to whatever size it declares), so the records are checked against the budget first."""

import zipfile
from pathlib import Path

from squeezer.core import limits
from squeezer.core.errors import ArchiveError, ModelFormatError, UnsafeFormatError
from squeezer.core.intake.archives import read_zip_directory

# The pickle that describes a state dict: a few hundred bytes per tensor.
MAX_PICKLE_BYTES = 64 << 20


def check_torch_zip(path: Path) -> None:
    """Raises ModelFormatError unless `path` is a zip-format torch.save file whose records fit the budget: stored
    (not compressed), within the model budget in total, with a pickle of bounded size."""
    path = Path(path)
    with path.open("rb") as file:
        pickled = file.read(1) == b"\x80"
    if pickled:  # a bare pickle, or a legacy torch.save file (a pickle stream that declares its storages' sizes)
        raise UnsafeFormatError(
            f"{path.name} is a Python pickle or a legacy torch.save file, which cannot be read without trusting it; "
            "save the state_dict with a current torch (zip format) or as .safetensors"
        )
    if not zipfile.is_zipfile(path):
        raise ModelFormatError(
            f"{path.name} is not a zip-format torch.save file (torch ≥ 1.6 writes one; older files declare storage "
            "sizes that cannot be checked before they are read): save it again with a current torch or as .safetensors"
        )
    try:
        infos = read_zip_directory(path)
    except ArchiveError as error:
        raise ModelFormatError(f"{path.name}: {error.message}") from None
    total = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ModelFormatError(
                f"{path.name}: record {info.filename[:80]!r} is compressed; torch.save stores records"
            )
        if info.filename.endswith(".pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise ModelFormatError(
                f"{path.name}: its pickle is {info.file_size:,} bytes; the limit is {MAX_PICKLE_BYTES:,}"
            )
        total += info.file_size
    limits.check(f"{path.name}: the records' total size", total, "max_model_bytes", ModelFormatError)
