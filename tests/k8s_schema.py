"""Our own JSON schema for the KubeRay manifests in k8s/ (RayCluster and RayJob, ray.io/v1).

Written by hand from the CRDs of KubeRay v1.4 (ray-operator/config/crd/bases/ray.io_rayclusters.yaml
and ray.io_rayjobs.yaml in ray-project/kuberay), the version the README names; not a copy of them.
It covers only the fields our manifests use, with the CRD's types: rayVersion a string,
enableInTreeAutoscaling a boolean, rayStartParams a map of strings (a number there is refused by the
API server), workerGroupSpecs[] with groupName (required) and replicas / minReplicas / maxReplicas
int32, pod templates whose containers need name and image, resources requests/limits as quantities
(int or string), serviceAccountName, volumes, tolerations; RayJob's entrypoint, submissionMode enum,
shutdownAfterJobFinishes and ttlSecondsAfterFinished. Unknown keys are refused here (the API server
would prune or reject them), so a misspelt field fails the test rather than being silently dropped.
"""

from __future__ import annotations

QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^[0-9.]+([KMGTPE]i?|m)?$"}]}
INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "image": {"type": "string"},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "env": {"type": "array", "items": {"type": "object", "required": ["name"],
                                           "properties": {"name": {"type": "string"},
                                                          "value": {"type": "string"}}}},
        "ports": {"type": "array", "items": {
            "type": "object", "required": ["containerPort"], "additionalProperties": False,
            "properties": {"containerPort": INT32, "name": {"type": "string"},
                           "protocol": {"type": "string"}}}},
        "resources": {"type": "object", "additionalProperties": False, "properties": {
            "requests": {"type": "object", "additionalProperties": QUANTITY},
            "limits": {"type": "object", "additionalProperties": QUANTITY}}},
        "volumeMounts": {"type": "array", "items": {
            "type": "object", "required": ["name", "mountPath"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "mountPath": {"type": "string"},
                           "readOnly": {"type": "boolean"}}}},
    },
}

POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "additionalProperties": False,
    "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object", "required": ["containers"], "additionalProperties": False, "properties": {
            "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
            "serviceAccountName": {"type": "string"},
            "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
            "tolerations": {"type": "array", "items": {"type": "object", "properties": {
                "key": {"type": "string"}, "operator": {"enum": ["Exists", "Equal"]},
                "effect": {"type": "string"}, "value": {"type": "string"}}}},
            "nodeSelector": STRING_MAP,
        }},
    },
}

RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "headGroupSpec": {"type": "object", "required": ["template"], "additionalProperties": False,
                          "properties": {"rayStartParams": STRING_MAP, "template": POD_TEMPLATE,
                                         "serviceType": {"type": "string"}}},
        "workerGroupSpecs": {"type": "array", "items": {
            "type": "object", "required": ["groupName", "template"], "additionalProperties": False,
            "properties": {"groupName": {"type": "string"}, "replicas": INT32, "minReplicas": INT32,
                           "maxReplicas": INT32, "rayStartParams": STRING_MAP, "template": POD_TEMPLATE}}},
    },
}

METADATA = {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}}

RAY_CLUSTER = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"},
                   "metadata": METADATA, "spec": RAY_CLUSTER_SPEC},
}

RAY_JOB = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"}, "metadata": METADATA,
        "spec": {"type": "object", "required": ["entrypoint", "rayClusterSpec"],
                 "additionalProperties": False, "properties": {
                     "entrypoint": {"type": "string"},
                     "runtimeEnvYAML": {"type": "string"},
                     "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                     "shutdownAfterJobFinishes": {"type": "boolean"},
                     "ttlSecondsAfterFinished": INT32,
                     "activeDeadlineSeconds": INT32,
                     "rayClusterSpec": RAY_CLUSTER_SPEC}},
    },
}

SCHEMAS = {"RayCluster": RAY_CLUSTER, "RayJob": RAY_JOB}
