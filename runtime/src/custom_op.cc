// onnxruntime glue: registers ai.pscompress PSConv and PSConvAdd (opset 1) and maps the
// ORT kernel API onto pscompress::PSConv. Links no onnxruntime: the API table comes from
// RegisterCustomOps' argument.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "dispatch.h"
#include "psconv.h"

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

Attributes read_attributes(Ort::ConstKernelInfo info) {
  using Ints = std::vector<int64_t>;
  Attributes a;
  a.kernel_shape = attribute<Ints>(info, "kernel_shape", {}, true, "a list of ints");
  a.strides = attribute<Ints>(info, "strides", a.strides, false, "a list of ints");
  a.pads = attribute<Ints>(info, "pads", a.pads, false, "a list of ints");
  a.dilations = attribute<Ints>(info, "dilations", a.dilations, false, "a list of ints");
  a.group = attribute<int64_t>(info, "group", 1, false, "an int");
  a.in_channels = attribute<int64_t>(info, "in_channels", 0, true, "an int");
  a.out_channels = attribute<int64_t>(info, "out_channels", 0, true, "an int");
  a.patterns = attribute<Ints>(info, "patterns", {}, true, "a list of ints");
  a.shift = attribute<int64_t>(info, "shift", 0, false, "an int");
  a.clip_min = attribute<float>(info, "clip_min", a.clip_min, false, "a float");
  a.clip_max = attribute<float>(info, "clip_max", a.clip_max, false, "a float");
  return a;
}

struct TensorView {
  bool present = false;  // an absent optional input has no value at all
  std::vector<int64_t> shape;
  const float* data = nullptr;
  size_t elements = 0;
};

TensorView view(const Ort::ConstValue& value, const char* name) {
  TensorView v;
  if (!value) return v;
  v.present = true;
  auto info = value.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw std::invalid_argument(std::string(name) + ": expected float32");
  v.shape = info.GetShape();
  v.elements = info.GetElementCount();
  v.data = value.GetTensorData<float>();
  return v;
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
      TensorView wv = view(w, "W");
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
    TensorView x = view(ctx.GetInput(0), "X");
    TensorView w = view(ctx.GetInput(1), "W");
    TensorView b = inputs > 2 ? view(ctx.GetInput(2), "B") : TensorView{};
    TensorView z = inputs > 3 ? view(ctx.GetInput(3), "Z") : TensorView{};
    if (!x.data && x.elements) throw std::invalid_argument("X: missing");
    if (!w_constant_ && w.shape.size() != 1) throw std::invalid_argument("W: expected a 1-D tensor");
    Inputs in{x.shape.data(), x.shape.size(), x.data,
              w.elements, w.data,
              b.present, b.shape.data(), b.shape.size(), b.data,
              z.shape.data(), z.shape.size(), z.data};
    const std::vector<int64_t> y_shape = conv_.output_shape(in, residual_);
    float* y = ctx.GetOutput(0, y_shape).GetTensorMutableData<float>();
    if (y_shape[0] == 0) return;
    Parallel parallel{[](void* self, void (*fn)(void*, size_t), size_t total, void* data) {
                        static_cast<Ort::KernelContext*>(self)->ParallelFor(fn, total, 0, data);
                      },
                      &ctx};
    conv_.run(in, y, path_.ukernel, path_.dwconv, parallel);
  }

  bool residual_;
  const CpuPath& path_;
  PSConv conv_;
  bool w_constant_ = false;
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
    Ort::UnownedSessionOptions(options).Add(domain);
    reg.domains.push_back(std::move(domain));  // ORT keeps pointers to it for the sessions' lifetime
    return nullptr;
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}
