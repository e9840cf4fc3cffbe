"""The prepared data as MLflow dataset inputs of a training run.

Each split is a dataset (context ``training``, ``validation`` or ``test``) whose digest is the
hash DVC records for the prepared-data folder in dvc.lock, so the MLflow UI's dataset column
and ``dvc.lock`` name the same data; its source says where DVC keeps it and what prepare
recorded about it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vaelab.core.mnist import IMAGE_SHAPE
from vaelab.core.paths import Artifacts

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def dvc_digest(folder: Path) -> str:
    """The ``md5`` DVC writes for ``folder`` as an output (a ``.dir`` hash of its files)."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        md5 = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        tree.add(path.relative_to(folder).parts, Meta(), HashInfo("md5", md5))
    tree.digest()
    return tree.hash_info.value


def log_datasets(run_id: str, paths: Artifacts, meta: dict[str, Any]) -> str:
    """Log the three splits as the run's dataset inputs (``meta``: what prepare recorded of
    them); return their digest."""
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = dvc_digest(paths.prepared)
    inputs = []
    for split, context in CONTEXTS.items():
        source = {
            "dvc_output": paths.prepared.as_posix(),
            "file": paths.prepared_split(split).as_posix(),
            "file_md5": meta["md5"][split],
            "binarize": meta["binarize"],
        }
        profile = {"images": meta["sizes"][split], "shape": list(IMAGE_SHAPE)}
        dataset = Dataset(
            f"mnist-{split}", digest, "dvc", json.dumps(source), profile=json.dumps(profile)
        )
        tags = [InputTag("mlflow.data.context", context)]
        inputs.append(DatasetInput(dataset, tags))
    mlflow.MlflowClient().log_inputs(run_id, datasets=inputs)
    return digest
