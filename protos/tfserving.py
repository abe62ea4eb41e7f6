"""TF Serving's and TensorFlow's messages (``protos/tfserving/*.proto``), from :mod:`protos.messages`.

The subset the gateway serves of ``tensorflow.serving.PredictionService`` and ``ModelService``, of the
tensors and signatures they carry (package ``tensorflow``) and of ``models.config``
(``ModelServerConfig``). Full names and field numbers are TF Serving's, so the messages are wire
compatible with tensorflow-serving-api's. This module imports no gRPC: the repository layer reads
``models.config`` with :data:`ModelServerConfig`.
"""

from __future__ import annotations

from protos.messages import ProtoMessage, message_class

#: Full names of the two services (RPC paths ``/tensorflow.serving.PredictionService/Predict``...).
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"


def _serving(name: str) -> type[ProtoMessage]:
    return message_class(f"tensorflow.serving.{name}")


TensorProto = message_class("tensorflow.TensorProto")
TensorShapeProto = message_class("tensorflow.TensorShapeProto")
TensorInfo = message_class("tensorflow.TensorInfo")
SignatureDef = message_class("tensorflow.SignatureDef")
Example = message_class("tensorflow.Example")
#: ``tensorflow.DataType``'s enum descriptor (``DataType.values_by_name["DT_FLOAT"].number``...).
DataType = TensorProto.DESCRIPTOR.fields_by_name["dtype"].enum_type
#: ``tensorflow.error.Code``'s enum descriptor.
ErrorCode = message_class("tensorflow.serving.StatusProto").DESCRIPTOR.fields_by_name["error_code"].enum_type

ModelSpec = _serving("ModelSpec")
PredictRequest = _serving("PredictRequest")
PredictResponse = _serving("PredictResponse")
SignatureDefMap = _serving("SignatureDefMap")
GetModelMetadataRequest = _serving("GetModelMetadataRequest")
GetModelMetadataResponse = _serving("GetModelMetadataResponse")
ClassificationRequest = _serving("ClassificationRequest")
ClassificationResponse = _serving("ClassificationResponse")
RegressionRequest = _serving("RegressionRequest")
RegressionResponse = _serving("RegressionResponse")
StatusProto = _serving("StatusProto")
ModelVersionStatus = _serving("ModelVersionStatus")
GetModelStatusRequest = _serving("GetModelStatusRequest")
GetModelStatusResponse = _serving("GetModelStatusResponse")
ModelServerConfig = _serving("ModelServerConfig")
#: A record of TF Serving's warmup file (``assets.extra/tf_serving_warmup_requests``); only ``predict_log`` declared.
PredictionLog = _serving("PredictionLog")
