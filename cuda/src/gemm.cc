#include "fastlm_cuda/gemm.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "fail.h"

namespace fastlm::cuda {

namespace {

constexpr size_t kWorkspaceBytes = 32 << 20;

struct Key {
  DType dtype;
  DType out_dtype;
  int64_t m, n, k;
  bool bias;
  GemmEpilogue epilogue;
  int device;
  bool operator<(const Key& o) const {
    return std::tie(dtype, out_dtype, m, n, k, bias, epilogue, device) <
           std::tie(o.dtype, o.out_dtype, o.m, o.n, o.k, o.bias, o.epilogue, o.device);
  }
};

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct DeviceState {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};

std::mutex mu;
std::map<Key, Plan> plans;
std::map<int, DeviceState> devices;

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kBF16:
      return CUDA_R_16BF;
  }
  return CUDA_R_32F;
}

#define FASTLM_LT(call)                                                                         \
  do {                                                                                          \
    const cublasStatus_t st_ = (call);                                                          \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                           \
      return fail(Status::kCudaError, std::string("cuBLASLt: ") + #call +                       \
                                          " failed: " + std::to_string(static_cast<int>(st_))); \
  } while (0)

Status device_state(int device, DeviceState** out) {
  DeviceState& s = devices[device];
  if (s.handle == nullptr) {
    FASTLM_LT(cublasLtCreate(&s.handle));
    if (cudaMalloc(&s.workspace, kWorkspaceBytes) != cudaSuccess) {
      cudaGetLastError();
      return fail(Status::kCudaError, "gemm: cannot allocate the cuBLASLt workspace");
    }
  }
  *out = &s;
  return Status::kOk;
}

// Column-major view: y^T [n, m] = w [k, n]^T x^T [k, m] (w row-major [n, k] is column-major
// [k, n]; x row-major [m, k] is column-major [k, m]; y row-major [m, n] is column-major [n, m]).
Status make_plan(const Key& key, cublasLtHandle_t handle, Plan* p) {
  const cudaDataType_t t = cuda_type(key.dtype);
  FASTLM_LT(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans = CUBLAS_OP_T, no = CUBLAS_OP_N;
  FASTLM_LT(
      cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans)));
  FASTLM_LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &no, sizeof(no)));
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  switch (key.epilogue) {
    case GemmEpilogue::kNone:
      epi = key.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
      break;
    case GemmEpilogue::kGeluTanh:
      epi = key.bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
      break;
  }
  FASTLM_LT(
      cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  FASTLM_LT(cublasLtMatrixLayoutCreate(&p->a, t, key.k, key.n, key.k));
  FASTLM_LT(cublasLtMatrixLayoutCreate(&p->b, t, key.k, key.m, key.k));
  FASTLM_LT(cublasLtMatrixLayoutCreate(&p->d, cuda_type(key.out_dtype), key.n, key.m, key.n));
  cublasLtMatmulPreference_t pref = nullptr;
  FASTLM_LT(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = kWorkspaceBytes;
  FASTLM_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                 &ws, sizeof(ws)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, p->op, p->a, p->b, p->d, p->d,
                                                           pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0)
    return fail(Status::kUnsupported,
                "gemm: cuBLASLt has no algorithm for m=" + std::to_string(key.m) +
                    " n=" + std::to_string(key.n) + " k=" + std::to_string(key.k));
  p->algo = result.algo;
  return Status::kOk;
}

}  // namespace

Status gemm(DType dtype, const void* x, const void* w, const void* bias, void* y, int64_t m,
            int64_t n, int64_t k, GemmEpilogue epilogue, cudaStream_t stream) {
  return gemm_out(dtype, dtype, x, w, bias, y, m, n, k, epilogue, stream);
}

Status gemm_out(DType dtype, DType out_dtype, const void* x, const void* w, const void* bias,
                void* y, int64_t m, int64_t n, int64_t k, GemmEpilogue epilogue,
                cudaStream_t stream) {
  if (m < 0 || n <= 0 || k <= 0) return fail(Status::kInvalidArgument, "gemm: bad shape");
  if (m == 0) return Status::kOk;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess)
    return fail(Status::kCudaError, "gemm: no current device");
  std::lock_guard<std::mutex> lock(mu);
  DeviceState* dev = nullptr;
  if (Status st = device_state(device, &dev); st != Status::kOk) return st;
  const Key key{dtype, out_dtype, m, n, k, bias != nullptr, epilogue, device};
  auto it = plans.find(key);
  if (it == plans.end()) {
    Plan p;
    if (Status st = make_plan(key, dev->handle, &p); st != Status::kOk) return st;
    it = plans.emplace(key, p).first;
  }
  Plan& p = it->second;
  if (bias != nullptr)
    FASTLM_LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                             sizeof(bias)));
  const float alpha = 1.0f, beta = 0.0f;
  FASTLM_LT(cublasLtMatmul(dev->handle, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.d, y, p.d,
                           &p.algo, dev->workspace, kWorkspaceBytes, stream));
  return Status::kOk;
}

int gemm_cached_algorithms() {
  std::lock_guard<std::mutex> lock(mu);
  return static_cast<int>(plans.size());
}

}  // namespace fastlm::cuda
