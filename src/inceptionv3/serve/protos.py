"""The gRPC messages, as data: KServe's v2 inference service (``inference.GRPCInferenceService``, the messages of
its ``grpc_predict_v2.proto`` and Triton's repository index, field for field) and the standard health service
(``grpc.health.v1.Health``). They are built into a descriptor pool of their own at import, so there is no
generated code to keep in step with the installed protobuf, and no clash with a client's copy of the same names
in the default pool (tritonclient's). ``tests/test_serve.py`` checks every field against tritonclient's.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_T = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"bool": _T.TYPE_BOOL, "string": _T.TYPE_STRING, "bytes": _T.TYPE_BYTES, "int32": _T.TYPE_INT32,
            "int64": _T.TYPE_INT64, "uint32": _T.TYPE_UINT32, "uint64": _T.TYPE_UINT64, "float": _T.TYPE_FLOAT,
            "double": _T.TYPE_DOUBLE}

# Each message: its fields as (name, number, type), where type is a scalar, another message's name (its full
# name within the package), "enum:Name", "map:Message" (a map<string, Message>), and a leading "*" marks repeated.
# A dotted message name is nested in the one before its last dot. ``oneof`` groups all of a message's fields.
_PARAMS = ("parameters", 4, "map:InferParameter")
INFERENCE = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, "bool")],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, "bool")],
    "ModelReadyRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelReadyResponse": [("ready", 1, "bool")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, "string"), ("version", 2, "string"), ("extensions", 3, "*string")],
    "ModelMetadataRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelMetadataResponse": [("name", 1, "string"), ("versions", 2, "*string"), ("platform", 3, "string"),
                              ("inputs", 4, "*ModelMetadataResponse.TensorMetadata"),
                              ("outputs", 5, "*ModelMetadataResponse.TensorMetadata")],
    "ModelMetadataResponse.TensorMetadata": [("name", 1, "string"), ("datatype", 2, "string"), ("shape", 3, "*int64")],
    "InferParameter": [("bool_param", 1, "bool"), ("int64_param", 2, "int64"), ("string_param", 3, "string"),
                       ("double_param", 4, "double"), ("uint64_param", 5, "uint64")],
    "InferTensorContents": [("bool_contents", 1, "*bool"), ("int_contents", 2, "*int32"),
                            ("int64_contents", 3, "*int64"), ("uint_contents", 4, "*uint32"),
                            ("uint64_contents", 5, "*uint64"), ("fp32_contents", 6, "*float"),
                            ("fp64_contents", 7, "*double"), ("bytes_contents", 8, "*bytes")],
    "ModelInferRequest": [("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"), _PARAMS,
                          ("inputs", 5, "*ModelInferRequest.InferInputTensor"),
                          ("outputs", 6, "*ModelInferRequest.InferRequestedOutputTensor"),
                          ("raw_input_contents", 7, "*bytes")],
    "ModelInferRequest.InferInputTensor": [("name", 1, "string"), ("datatype", 2, "string"), ("shape", 3, "*int64"),
                                           _PARAMS, ("contents", 5, "InferTensorContents")],
    "ModelInferRequest.InferRequestedOutputTensor": [("name", 1, "string"), ("parameters", 2, "map:InferParameter")],
    "ModelInferResponse": [("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"), _PARAMS,
                           ("outputs", 5, "*ModelInferResponse.InferOutputTensor"),
                           ("raw_output_contents", 6, "*bytes")],
    "ModelInferResponse.InferOutputTensor": [("name", 1, "string"), ("datatype", 2, "string"), ("shape", 3, "*int64"),
                                             _PARAMS, ("contents", 5, "InferTensorContents")],
    "RepositoryIndexRequest": [("repository_name", 1, "string"), ("ready", 2, "bool")],
    "RepositoryIndexResponse": [("models", 1, "*RepositoryIndexResponse.ModelIndex")],
    "RepositoryIndexResponse.ModelIndex": [("name", 1, "string"), ("version", 2, "string"), ("state", 3, "string"),
                                           ("reason", 4, "string")],
}
INFERENCE_ONEOFS = {"InferParameter": "parameter_choice"}
INFERENCE_METHODS = {name: (f"{name}Request", f"{name}Response") for name in
                     ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
                      "RepositoryIndex")}

HEALTH = {
    "HealthCheckRequest": [("service", 1, "string")],
    "HealthCheckResponse": [("status", 1, "enum:HealthCheckResponse.ServingStatus")],
}
HEALTH_ENUMS = {"HealthCheckResponse.ServingStatus": ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")}
HEALTH_METHODS = {"Check": ("HealthCheckRequest", "HealthCheckResponse"),
                  "Watch": ("HealthCheckRequest", "HealthCheckResponse")}  # Watch streams its answers

INFERENCE_SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"


def _file(name: str, package: str, messages: dict, service: str, methods: dict, oneofs: dict | None = None,
          enums: dict | None = None, streaming: tuple[str, ...] = ()) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    made: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full, fields in messages.items():
        parent, _, short = full.rpartition(".")
        message = (made[parent].nested_type if parent else proto.message_type).add(name=short)
        made[full] = message
        for field_name, number, kind in fields:
            field = message.field.add(name=field_name, number=number, json_name=_camel(field_name))
            field.label = _T.LABEL_REPEATED if kind.startswith(("*", "map:")) else _T.LABEL_OPTIONAL
            kind = kind.lstrip("*")
            if kind.startswith("map:"):  # map<string, V>: a repeated nested XEntry {key = 1; value = 2}
                entry = message.nested_type.add(name=_camel(field_name, upper=True) + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, label=_T.LABEL_OPTIONAL, type=_T.TYPE_STRING, json_name="key")
                entry.field.add(name="value", number=2, label=_T.LABEL_OPTIONAL, type=_T.TYPE_MESSAGE,
                                type_name=f".{package}.{kind[4:]}", json_name="value")
                field.type, field.type_name = _T.TYPE_MESSAGE, f".{package}.{full}.{entry.name}"
            elif kind.startswith("enum:"):
                field.type, field.type_name = _T.TYPE_ENUM, f".{package}.{kind[5:]}"
            elif kind in _SCALARS:
                field.type = _SCALARS[kind]
            else:
                field.type, field.type_name = _T.TYPE_MESSAGE, f".{package}.{kind}"
        if full in (oneofs or {}):
            message.oneof_decl.add(name=oneofs[full])
            for field in message.field:
                field.oneof_index = 0
    for full, values in (enums or {}).items():
        parent, _, short = full.rpartition(".")
        enum = (made[parent].enum_type if parent else proto.enum_type).add(name=short)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    service_proto = proto.service.add(name=service.rpartition(".")[2])
    for method, (request, response) in methods.items():
        service_proto.method.add(name=method, input_type=f".{package}.{request}", output_type=f".{package}.{response}",
                                 server_streaming=method in streaming)
    return proto


def _camel(name: str, upper: bool = False) -> str:
    head, *rest = name.split("_")
    return (head.capitalize() if upper else head) + "".join(part.capitalize() for part in rest)


POOL = descriptor_pool.DescriptorPool()
POOL.Add(_file("grpc_predict_v2.proto", "inference", INFERENCE, INFERENCE_SERVICE, INFERENCE_METHODS,
               oneofs=INFERENCE_ONEOFS))
POOL.Add(_file("grpc/health/v1/health.proto", "grpc.health.v1", HEALTH, HEALTH_SERVICE, HEALTH_METHODS,
               enums=HEALTH_ENUMS, streaming=("Watch",)))


def message(full_name: str):
    """The message class of a full name in :data:`POOL` (``inference.ModelInferRequest``)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


__all__ = ["HEALTH_SERVICE", "INFERENCE_SERVICE", "POOL", "message"]
