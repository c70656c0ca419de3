"""TEMPORARY shim during the runtime/ refactor: every name here lives in robustmaxup.runtime.
Import from there; this module is deleted once no caller is left."""

from robustmaxup.runtime.checks import parse_fraction  # noqa: F401
from robustmaxup.runtime.dist import resolve_device  # noqa: F401
from robustmaxup.runtime.io import (  # noqa: F401
    atomic_path, atomic_torch_save, atomic_write_json, atomic_write_text, ensure_writable_dir,
)
from robustmaxup.runtime.records import device_description, git_sha, provenance, sha256_file  # noqa: F401
from robustmaxup.runtime.seeds import derive_seed, make_generator, seed_everything  # noqa: F401
