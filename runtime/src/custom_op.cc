// onnxruntime glue: registers ai.pscompress PSConv, PSConvAdd and QLinearPSConv (opset 1) and
// maps the ORT kernel API onto pscompress::PSConv and pscompress::QLinearPSConv. Links no onnxruntime: the API table comes from
// RegisterCustomOps' argument.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <memory>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "dispatch.h"
#include "psconv.h"
#include "qlinear_psconv.h"

namespace pscompress {
namespace {

constexpr const char* kDomain = "ai.pscompress";

// Optional attributes fall back to the contract's defaults; a present attribute of the
// wrong type is an error, never a silent default.
template <typename T>
T attribute(Ort::ConstKernelInfo info, const char* name, T fallback, bool required, const char* type) {
  try {
    if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
      return info.GetAttributes<int64_t>(name);
    } else {
      return info.GetAttribute<T>(name);
    }
  } catch (const Ort::Exception& e) {
    const bool missing = std::string(e.what()).find("No attribute") != std::string::npos;
    if (!missing) throw std::invalid_argument(std::string(name) + ": expected " + type);
    if (required) throw std::invalid_argument(std::string(name) + ": required attribute missing");
    return fallback;
  }
}

bool has_attribute(Ort::ConstKernelInfo info, const char* name) {
  try {
    info.GetAttribute<float>(name);
    return true;
  } catch (const Ort::Exception& e) {
    return std::string(e.what()).find("No attribute") == std::string::npos;  // present, of another type
  }
}

// The layer attributes of every operator here.
LayerAttributes read_layer_attributes(Ort::ConstKernelInfo info) {
  using Ints = std::vector<int64_t>;
  LayerAttributes a;
  a.kernel_shape = attribute<Ints>(info, "kernel_shape", {}, true, "a list of ints");
  a.strides = attribute<Ints>(info, "strides", a.strides, false, "a list of ints");
  a.pads = attribute<Ints>(info, "pads", a.pads, false, "a list of ints");
  a.dilations = attribute<Ints>(info, "dilations", a.dilations, false, "a list of ints");
  a.group = attribute<int64_t>(info, "group", 1, false, "an int");
  a.in_channels = attribute<int64_t>(info, "in_channels", 0, true, "an int");
  a.out_channels = attribute<int64_t>(info, "out_channels", 0, true, "an int");
  a.patterns = attribute<Ints>(info, "patterns", {}, true, "a list of ints");
  a.shift = attribute<int64_t>(info, "shift", 0, false, "an int");
  return a;
}

Attributes read_attributes(Ort::ConstKernelInfo info) {
  Attributes a;
  static_cast<LayerAttributes&>(a) = read_layer_attributes(info);
  a.clip_min = attribute<float>(info, "clip_min", a.clip_min, false, "a float");
  a.clip_max = attribute<float>(info, "clip_max", a.clip_max, false, "a float");
  return a;
}

// QLinearPSConv's output range is set by y_scale and y_zero_point: a clamp would be ignored.
LayerAttributes read_quantized_attributes(Ort::ConstKernelInfo info) {
  for (const char* name : {"clip_min", "clip_max"})
    if (has_attribute(info, name))
      throw std::invalid_argument(std::string(name) +
                                  ": not an attribute of QLinearPSConv (y_scale and y_zero_point set the output range)");
  return read_layer_attributes(info);
}

template <class T> constexpr ONNXTensorElementDataType kElementType = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
template <> constexpr ONNXTensorElementDataType kElementType<float> = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
template <> constexpr ONNXTensorElementDataType kElementType<uint8_t> = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
template <> constexpr ONNXTensorElementDataType kElementType<int8_t> = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
template <> constexpr ONNXTensorElementDataType kElementType<int32_t> = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
template <class T> constexpr const char* kTypeName = "";
template <> constexpr const char* kTypeName<float> = "float32";
template <> constexpr const char* kTypeName<uint8_t> = "uint8";
template <> constexpr const char* kTypeName<int8_t> = "int8";
template <> constexpr const char* kTypeName<int32_t> = "int32";

template <class T = float>
struct TensorView {
  bool present = false;  // an absent optional input has no value at all
  std::vector<int64_t> shape;
  const T* data = nullptr;
  size_t elements = 0;
  TensorRef<T> ref() const { return {shape.data(), shape.size(), data}; }
};

template <class T = float>
TensorView<T> view(const Ort::ConstValue& value, const char* name) {
  TensorView<T> v;
  if (!value) return v;
  v.present = true;
  auto info = value.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != kElementType<T>) throw std::invalid_argument(std::string(name) + ": expected " + kTypeName<T>);
  v.shape = info.GetShape();
  v.elements = info.GetElementCount();
  v.data = value.GetTensorData<T>();
  return v;
}

Parallel parallel_of(Ort::KernelContext& ctx) {
  return {[](void* self, void (*fn)(void*, size_t), size_t total, void* data) {
            static_cast<Ort::KernelContext*>(self)->ParallelFor(fn, total, 0, data);
          },
          &ctx};
}

OrtStatusPtr to_status(const OrtApi& api, const char* op, const std::exception& e) {
  return api.CreateStatus(ORT_INVALID_ARGUMENT, (std::string(op) + ": " + e.what()).c_str());
}

class Kernel {
 public:
  Kernel(const OrtKernelInfo* raw, bool residual)
      : residual_(residual), path_(require_path()), conv_(read_attributes(Ort::ConstKernelInfo(raw))) {
    Ort::ConstKernelInfo info(raw);
    int is_constant = 0;
    Ort::ConstValue w = info.GetTensorConstantInput(1, &is_constant);
    if (is_constant) {
      TensorView<> wv = view(w, "W");
      if (wv.shape.size() != 1) throw std::invalid_argument("W: expected a 1-D tensor");
      conv_.prepack(wv.data, wv.elements);
      w_constant_ = true;
    }
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    try {
      compute(raw);
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(Ort::GetApi(), residual_ ? "PSConvAdd" : "PSConv", e);
    }
  }

 private:
  void compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    const size_t inputs = ctx.GetInputCount();
    TensorView<> x = view(ctx.GetInput(0), "X");
    TensorView<> w = view(ctx.GetInput(1), "W");
    TensorView<> b = inputs > 2 ? view(ctx.GetInput(2), "B") : TensorView<>{};
    TensorView<> z = inputs > 3 ? view(ctx.GetInput(3), "Z") : TensorView<>{};
    if (!x.data && x.elements) throw std::invalid_argument("X: missing");
    if (!w_constant_ && w.shape.size() != 1) throw std::invalid_argument("W: expected a 1-D tensor");
    Inputs in{x.shape.data(), x.shape.size(), x.data,
              w.elements, w.data,
              b.present, b.shape.data(), b.shape.size(), b.data,
              z.shape.data(), z.shape.size(), z.data};
    const std::vector<int64_t> y_shape = conv_.output_shape(in, residual_);
    float* y = ctx.GetOutput(0, y_shape).GetTensorMutableData<float>();
    if (y_shape[0] == 0) return;
    conv_.run(in, y, path_.ukernel, path_.dwconv, parallel_of(ctx));
  }

  bool residual_;
  const CpuPath& path_;
  PSConv conv_;
  bool w_constant_ = false;
};

// QLinearPSConv(X, x_scale, x_zero_point, W, w_scale, y_scale, y_zero_point, [B]) -> Y.
class QKernel {
 public:
  static constexpr const char* kName = "QLinearPSConv";
  explicit QKernel(const OrtKernelInfo* raw)
      : path_(require_path()), conv_(read_quantized_attributes(Ort::ConstKernelInfo(raw)), {path_.qgemm, path_.qdot, path_.qdwconv}) {
    Ort::ConstKernelInfo info(raw);
    int is_constant = 0;
    Ort::ConstValue w = info.GetTensorConstantInput(kW, &is_constant);
    if (is_constant) {
      TensorView<int8_t> wv = view<int8_t>(w, "W");
      if (wv.shape.size() != 1) throw std::invalid_argument("W: expected a 1-D tensor");
      conv_.prepack(wv.data, wv.elements);
      w_constant_ = true;
    }
    // Constant scales and zero points (the usual case): checked and combined once, at load.
    bool all_constant = true;
    std::vector<Ort::ConstValue> values;
    for (int index : {kXScale, kXZeroPoint, kWScale, kYScale, kYZeroPoint}) {
      values.push_back(info.GetTensorConstantInput(index, &is_constant));
      all_constant = all_constant && is_constant;
    }
    if (all_constant) requantization_ = std::make_unique<Requantization>(requantization(values));
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    try {
      compute(raw);
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(Ort::GetApi(), kName, e);
    }
  }

 private:
  enum Input { kX, kXScale, kXZeroPoint, kW, kWScale, kYScale, kYZeroPoint, kB };

  // values: x_scale, x_zero_point, w_scale, y_scale, y_zero_point.
  Requantization requantization(const std::vector<Ort::ConstValue>& values) const {
    const TensorView<float> x_scale = view<float>(values[0], "x_scale"), w_scale = view<float>(values[2], "w_scale");
    const TensorView<float> y_scale = view<float>(values[3], "y_scale");
    const TensorView<uint8_t> x_zero_point = view<uint8_t>(values[1], "x_zero_point");
    const TensorView<uint8_t> y_zero_point = view<uint8_t>(values[4], "y_zero_point");
    return conv_.requantization({x_scale.ref(), x_zero_point.ref(), w_scale.ref(), y_scale.ref(), y_zero_point.ref()});
  }

  void compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    TensorView<uint8_t> x = view<uint8_t>(ctx.GetInput(kX), "X");
    TensorView<int8_t> w = view<int8_t>(ctx.GetInput(kW), "W");
    TensorView<int32_t> b = ctx.GetInputCount() > kB ? view<int32_t>(ctx.GetInput(kB), "B") : TensorView<int32_t>{};
    if (!x.data && x.elements) throw std::invalid_argument("X: missing");
    if (!w_constant_ && w.shape.size() != 1) throw std::invalid_argument("W: expected a 1-D tensor");
    std::unique_ptr<Requantization> per_run;
    if (!requantization_) {
      per_run = std::make_unique<Requantization>(requantization(
          {ctx.GetInput(kXScale), ctx.GetInput(kXZeroPoint), ctx.GetInput(kWScale), ctx.GetInput(kYScale),
           ctx.GetInput(kYZeroPoint)}));
    }
    const QInputs in{x.shape.data(), x.shape.size(), x.data, w.elements, w.data,
                     b.present, b.shape.data(), b.shape.size(), b.data};
    const std::vector<int64_t> y_shape = conv_.output_shape(in);
    uint8_t* y = ctx.GetOutput(0, y_shape).GetTensorMutableData<uint8_t>();
    if (y_shape[0] == 0) return;
    conv_.run(in, requantization_ ? *requantization_ : *per_run, y, parallel_of(ctx));
  }

  const CpuPath& path_;
  QLinearPSConv conv_;
  bool w_constant_ = false;
  std::unique_ptr<Requantization> requantization_;  // when every scale and zero point is constant
};

struct QOp : Ort::CustomOpBase<QOp, QKernel, true> {
  QOp() {
    start_ver_ = 1;
    end_ver_ = 1;
  }
  const char* GetName() const { return QKernel::kName; }
  size_t GetInputTypeCount() const { return 8; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    static constexpr ONNXTensorElementDataType types[] = {
        kElementType<uint8_t>, kElementType<float>, kElementType<uint8_t>, kElementType<int8_t>,
        kElementType<float>,   kElementType<float>, kElementType<uint8_t>, kElementType<int32_t>};
    return types[index];
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 7 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                      : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return kElementType<uint8_t>; }

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new QKernel(info);
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(api, GetName(), e);
    }
  }
};

struct Op : Ort::CustomOpBase<Op, Kernel, true> {
  explicit Op(bool residual) : residual_(residual) {
    start_ver_ = 1;
    end_ver_ = 1;
  }
  const char* GetName() const { return residual_ ? "PSConvAdd" : "PSConv"; }
  size_t GetInputTypeCount() const { return residual_ ? 4 : 3; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 2 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                      : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new Kernel(info, residual_);
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(api, GetName(), e);
    }
  }

  bool residual_;
};

struct Registration {
  Op conv{false};
  Op conv_add{true};
  QOp qlinear_conv;
  std::vector<Ort::CustomOpDomain> domains;
};
std::mutex registration_mutex;
Registration& registration() {
  static Registration* r = new Registration();  // lives as long as the process: sessions hold the ops
  return *r;
}

}  // namespace
}  // namespace pscompress

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {  // an onnxruntime older than these headers: say so through the oldest API table
    const OrtApi* oldest = api_base->GetApi(1);
    return oldest ? oldest->CreateStatus(ORT_FAIL, "libpscompress_ort needs onnxruntime >= 1.21") : nullptr;
  }
  Ort::InitApi(api);
  try {
    std::lock_guard<std::mutex> lock(pscompress::registration_mutex);
    auto& reg = pscompress::registration();
    Ort::CustomOpDomain domain(pscompress::kDomain);
    domain.Add(&reg.conv);
    domain.Add(&reg.conv_add);
    domain.Add(&reg.qlinear_conv);
    Ort::UnownedSessionOptions(options).Add(domain);
    reg.domains.push_back(std::move(domain));  // ORT keeps pointers to it for the sessions' lifetime
    return nullptr;
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}
