"""Names shared by the operator, its children and the optimizer Job."""

from __future__ import annotations

GROUP = "flotilla.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SmallModel"
PLURAL = "smallmodels"
SINGULAR = "smallmodel"
SHORT_NAMES = ("slm",)
CRD_NAME = f"{PLURAL}.{GROUP}"

# Bumped whenever the optimizer's recipes or output layout change, so artifacts built by an
# older optimizer are not reused under the same key.
OPTIMIZER_VERSION = "1"

FIELD_MANAGER = "flotilla"
FINALIZER = f"{GROUP}/finalizer"
# kopf keeps progress and the last handled spec in annotations under our own prefix.
ANNOTATION_PREFIX = GROUP

# Writers of fields the operator owns apart from its server-side applies.
SCALE_MANAGER = f"{FIELD_MANAGER}-scaler"  # Deployment replicas, through the scale subresource

# Manual rollout commands (`flotilla promote|abort NAME`): set on the SmallModel, honoured once
# and removed by the operator.
ANNOTATION_PROMOTE = f"{GROUP}/promote"
ANNOTATION_ABORT = f"{GROUP}/abort"

# Labels on every child object.
LABEL_MODEL = f"{GROUP}/model"
LABEL_COMPONENT = f"{GROUP}/component"  # optimizer | server
LABEL_ARTIFACT_KEY = f"{GROUP}/artifact-key"
LABEL_REVISION = f"{GROUP}/revision"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "flotilla"

COMPONENT_OPTIMIZER = "optimizer"
COMPONENT_SERVER = "server"
COMPONENT_ARTIFACT_GC = "artifact-gc"

# Condition types. Ready/Reconciling/Stalled are what kstatus (Flux, Argo CD, kubectl wait)
# understands; the rest say which stage of the flow holds the model up.
COND_READY = "Ready"
COND_RECONCILING = "Reconciling"
COND_STALLED = "Stalled"
COND_OPTIMIZED = "Optimized"
COND_CANARY = "CanaryProgressing"
COND_LATENCY = "LatencyObjectiveMet"
COND_DEGRADED = "Degraded"

# GPU resource names as the NVIDIA device plugin advertises them.
GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
