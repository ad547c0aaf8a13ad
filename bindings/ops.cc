// fastlm._core.ops: the kernels over numpy arrays, for tests and benchmarks. Activations are
// float32 arrays; bfloat16/float16 tensors travel as uint16 arrays of their bits, with a dtype
// name beside them. In-place ops modify the arrays they are given.
#include "ops/ops.h"

#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "bindings/registry.h"
#include "core/status.h"
#include "core/tensor.h"
#include "cpu/batch_invariant.h"
#include "cpu/isa.h"
#include "cpu/linear_cpu.h"
#include "cpu/paged_attention_cpu.h"
#include "cpu/qblocks.h"
#include "ops/backend.h"
#include "ops/batch_checks.h"
#include "ops/prepack.h"

namespace py = pybind11;

namespace fastlm::bindings {
namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

// A view of a numpy array as a Tensor of `dtype` (float32: float32 array; bfloat16/float16:
// uint16 bits or a float16 array). No copy: the array must be C-contiguous.
Tensor view_of(const py::array& a, DType dtype, const char* name, bool writable = false) {
  FASTLM_CHECK_ARG(a.flags() & py::array::c_style, name, " must be C-contiguous");
  const char kind = a.dtype().kind();
  const auto itemsize = a.itemsize();
  bool ok = false;
  switch (dtype) {
    case DType::kF32:
      ok = kind == 'f' && itemsize == 4;
      break;
    case DType::kBF16:
      ok = kind == 'u' && itemsize == 2;
      break;
    case DType::kF16:
      ok = (kind == 'u' || kind == 'f') && itemsize == 2;
      break;
    case DType::kI32:
      ok = kind == 'i' && itemsize == 4;
      break;
    case DType::kI64:
      ok = kind == 'i' && itemsize == 8;
      break;
    case DType::kU8:
      ok = kind == 'u' && itemsize == 1;
      break;
  }
  FASTLM_CHECK_ARG(ok, name, ": numpy dtype ", std::string(py::str(a.dtype())), " does not hold ",
                   dtype_name(dtype), " (bfloat16 travels as uint16 bits)");
  // mutable_data() checks the WRITEABLE flag; in-place ops must not write read-only arrays.
  void* data = writable ? const_cast<py::array&>(a).mutable_data() : const_cast<void*>(a.data());
  return Tensor::view(data, shape_of(a), dtype);
}

Tensor f32_view(const py::array& a, const char* name) { return view_of(a, DType::kF32, name); }

F32Array new_f32(std::vector<int64_t> shape) { return F32Array(shape); }

Tensor view_out(F32Array& a) { return Tensor::view(a.mutable_data(), shape_of(a), DType::kF32); }

// ops::prepack_linear's handle, holding the numpy array it packed alive beside it.
struct PackedLinear {
  std::shared_ptr<const void> packed;
  py::object source;
};
Tensor index_view(const I32Array& a) {
  return Tensor::view(const_cast<int32_t*>(a.data()), shape_of(a), DType::kI32);
}
Tensor index_view(const I64Array& a) {
  return Tensor::view(const_cast<int64_t*>(a.data()), shape_of(a), DType::kI64);
}

QType parse_qtype(const std::string& name) {
  for (QType t :
       {QType::kQ4_0, QType::kQ4_1, QType::kQ5_0, QType::kQ5_1, QType::kQ8_0, QType::kQ3_K,
        QType::kQ4_K, QType::kQ5_K, QType::kQ6_K, QType::kIQ4_NL, QType::kIQ4_XS})
    if (name == qtype_name(t)) return t;
  throw InvalidArgument("unknown quantized type '" + name + "' (q4_0, q4_1, q5_0, q5_1, q8_0, " +
                        "q3_k, q4_k, q5_k, q6_k, iq4_nl or iq4_xs)");
}

// These entry points act as the host that builds a batch: they validate index arrays
// (ops/batch_checks.h) before the op, which checks shapes only.

Device parse_device(const std::string& name) {
  for (Device d : {Device::kCPU, Device::kCUDA}) {
    if (name == device_name(d)) {
      FASTLM_CHECK_ARG(ops::device_available(d), "device '", name,
                       "' is not available in this build or on this machine");
      return d;
    }
  }
  throw InvalidArgument("unknown device '" + name + "' (cpu or cuda)");
}

// Runs one op on a device (the `device` argument of every op below): host inputs are copied
// there, outputs made there and copied back into their numpy arrays by finish(). On the CPU the
// numpy arrays are used in place. The same test body then covers every device (test_ops.py).
class OnDevice {
 public:
  explicit OnDevice(const std::string& device) : device_(parse_device(device)) {}
  ExecContext& ctx() const { return ops::default_context(device_); }
  Tensor in(const Tensor& host) const {
    return device_ == Device::kCPU || !host.defined() ? host : host.copy_to(device_, ctx().stream);
  }
  // An output whose result belongs in `host`; in_place: the op also reads it.
  Tensor& out(Tensor& host, bool in_place = false) {
    if (device_ == Device::kCPU) return host;
    Tensor dev = in_place ? in(host) : Tensor::empty(host.shape(), host.dtype(), device_);
    results_.push_back({host, dev});
    return results_.back().second;
  }
  void finish() {
    for (auto& [host, dev] : results_) host.copy_from(dev, ctx().stream);
  }

 private:
  Device device_;
  std::deque<std::pair<Tensor, Tensor>> results_;  // stable references
};

}  // namespace
}  // namespace fastlm::bindings

FASTLM_BINDING(ops) {
  using namespace fastlm;
  using namespace fastlm::bindings;
  auto ops = m.def_submodule("ops", "Kernels over numpy arrays (tests, benchmarks)");
  m.def(
      "devices",
      [] {
        std::vector<std::string> names;
        for (Device d : {Device::kCPU, Device::kCUDA}) {
          if (ops::device_available(d)) names.emplace_back(device_name(d));
        }
        return names;
      },
      "The devices this build and machine run ops on ('cpu' first); every op takes device=.");

  ops.def(
      "isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); },
      "The instruction-set path the kernels dispatch on now.");
  ops.def(
      "detected_isa", [] { return std::string(cpu::isa_name(cpu::detected_isa())); },
      "The best instruction-set path this CPU supports.");
  ops.def(
      "set_isa", [](const std::string& name) { cpu::set_isa(cpu::parse_isa(name)); },
      py::arg("name"), "Selects 'scalar', 'avx2', 'avx512' or 'avx512bf16'.");
  ops.def(
      "gemv_max_rows",
      [](const std::string& w_dtype) {
        return cpu::gemv_max_rows(parse_dtype(w_dtype) == DType::kBF16);
      },
      py::arg("w_dtype") = "bfloat16",
      "With batch invariance off: the largest M linear serves without oneDNN.");
  ops.def("set_gemv_max_rows", &cpu::set_gemv_max_rows, py::arg("rows"),
          "With batch invariance off: forces the GEMV/oneDNN crossover for both dtypes (0..8); -1 "
          "restores the defaults.");
  ops.def(
      "attention_int16",
      [](const std::string& cache_dtype, int head_dim) {
        return cpu::attention_int16(parse_dtype(cache_dtype), head_dim);
      },
      py::arg("cache_dtype"), py::arg("head_dim"),
      "Whether paged attention on the active ISA runs its integer kernels for this cache: "
      "scores and P V as int16 dot products of rows quantized with their own scales (bf16 "
      "caches on AVX2, head_dim 64 or 128).");
  ops.def("batch_invariant", &cpu::batch_invariant,
          "Whether kernels compute each token independently of the rest of the batch.");
  ops.def("set_batch_invariant", &cpu::set_batch_invariant, py::arg("on"),
          "Process-wide: on, every linear runs the canonical GEMM and attention uses fixed "
          "position splits (bitwise batch invariance); off, large matmuls go to oneDNN.");

  ops.def(
      "set_num_threads", [](int n) { omp_set_num_threads(n); }, py::arg("n"),
      "OpenMP threads the kernels called from this thread use.");
  ops.def("num_threads", [] { return omp_get_max_threads(); });
  py::class_<PackedLinear>(ops, "PackedLinear",
                           "Packed weights: linear on the same array reads them while this lives.");
  ops.def(
      "prepack_linear",
      [](const py::array& w, const std::string& w_dtype) {
        const Tensor wt = view_of(w, parse_dtype(w_dtype), "w");
        return PackedLinear{ops::prepack_linear(wt), w};
      },
      py::arg("w"), py::arg("w_dtype"));
  ops.def(
      "linear",
      [](const F32Array& x, const py::array& w, const std::string& w_dtype,
         const std::optional<F32Array>& bias, const std::string& device) {
        const Tensor xt = f32_view(x, "x");
        const Tensor wt = view_of(w, parse_dtype(w_dtype), "w");
        F32Array y = new_f32({xt.dim() == 2 ? xt.size(0) : 0, wt.dim() == 2 ? wt.size(0) : 0});
        Tensor yt = view_out(y);
        Tensor bt;
        if (bias) bt = f32_view(*bias, "bias");
        OnDevice dev(device);
        py::gil_scoped_release release;
        const Tensor bd = dev.in(bt);
        ops::linear(dev.ctx(), dev.in(xt), dev.in(wt), bias ? &bd : nullptr, dev.out(yt));
        dev.finish();
        return y;
      },
      py::arg("x"), py::arg("w"), py::arg("w_dtype") = "float32", py::arg("bias") = py::none(),
      py::arg("device") = "cpu", "y = x @ w.T (+ bias). w: float32 array or uint16 bfloat16 bits.");

  ops.def(
      "quantize_rows",
      [](const F32Array& w, const std::string& qtype) {
        const Tensor wt = f32_view(w, "w");
        const QType t = parse_qtype(qtype);
        FASTLM_CHECK_ARG(wt.dim() == 2, "quantize_rows: w must be 2-D, got ", wt.shape_str());
        const int64_t rows = wt.size(0), cols = wt.size(1);
        FASTLM_CHECK_ARG(cols % qtype_block_elems(t) == 0, "quantize_rows: K = ", cols,
                         " is not a multiple of the ", qtype, " block size");
        const auto row_bytes = static_cast<int64_t>(qtype_row_bytes(t, cols));
        py::array_t<uint8_t> out(std::vector<int64_t>{rows, row_bytes});
        const float* src = wt.data<float>();
        uint8_t* dst = out.mutable_data();
        py::gil_scoped_release release;
        for (int64_t r = 0; r < rows; ++r)
          cpu::quantize_blocks(t, src + r * cols, dst + r * row_bytes, cols);
        return out;
      },
      py::arg("w"), py::arg("qtype"),
      "w [N, K] float32 as packed blocks of qtype: uint8 [N, row bytes] (the formats "
      "--quantization writes: q4_0, q4_1, q8_0).");
  ops.def(
      "qlinear",
      [](const F32Array& x, const py::array& w, const std::string& qtype,
         const std::optional<F32Array>& bias) {
        const Tensor xt = f32_view(x, "x");
        const Tensor wt = view_of(w, DType::kU8, "w");
        const QType t = parse_qtype(qtype);
        FASTLM_CHECK_ARG(xt.dim() == 2 && wt.dim() == 2, "qlinear: x and w must be 2-D");
        const int64_t k = xt.size(1);
        FASTLM_CHECK_ARG(k % qtype_block_elems(t) == 0 &&
                             wt.size(1) == static_cast<int64_t>(qtype_row_bytes(t, k)),
                         "qlinear: w ", wt.shape_str(), " does not hold rows of ", k, " ", qtype,
                         " values");
        const Weight packed = Weight::quantized(t, wt, wt.size(0), k);
        F32Array y = new_f32({xt.size(0), wt.size(0)});
        Tensor yt = view_out(y);
        Tensor bt;
        if (bias) bt = f32_view(*bias, "bias");
        py::gil_scoped_release release;
        ops::linear(ops::default_context(Device::kCPU), xt, packed, bias ? &bt : nullptr, yt);
        return y;
      },
      py::arg("x"), py::arg("w"), py::arg("qtype"), py::arg("bias") = py::none(),
      "y = x @ dequantize(w).T (+ bias) on the CPU; w: packed blocks of qtype, uint8 [N, row "
      "bytes] (a GGUF tensor's rows, or quantize_rows).");

  ops.def(
      "rms_norm",
      [](const F32Array& x, const py::array& w, const std::string& w_dtype, float eps,
         const std::string& device) {
        const Tensor xt = f32_view(x, "x");
        const Tensor wt = view_of(w, parse_dtype(w_dtype), "w");
        F32Array y = new_f32(xt.shape());
        Tensor yt = view_out(y);
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::rms_norm(dev.ctx(), dev.in(xt), dev.in(wt), eps, dev.out(yt));
        dev.finish();
        return y;
      },
      py::arg("x"), py::arg("w"), py::arg("w_dtype") = "float32", py::arg("eps") = 1e-6f,
      py::arg("device") = "cpu");

  ops.def(
      "add_rms_norm",
      [](py::array& residual, const F32Array& x, const py::array& w, const std::string& w_dtype,
         float eps, const std::string& device) {
        Tensor rt = view_of(residual, DType::kF32, "residual", true);
        const Tensor xt = f32_view(x, "x");
        const Tensor wt = view_of(w, parse_dtype(w_dtype), "w");
        F32Array y = new_f32(xt.shape());
        Tensor yt = view_out(y);
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::add_rms_norm(dev.ctx(), dev.out(rt, true), dev.in(xt), dev.in(wt), eps, dev.out(yt));
        dev.finish();
        return y;
      },
      py::arg("residual"), py::arg("x"), py::arg("w"), py::arg("w_dtype") = "float32",
      py::arg("eps") = 1e-6f, py::arg("device") = "cpu",
      "residual += x (in place); returns rms_norm(residual).");

  ops.def(
      "head_rms_norm",
      [](py::array& x, const py::array& w, const std::string& w_dtype, int head_dim, float eps,
         const std::string& device) {
        Tensor xt = view_of(x, DType::kF32, "x", true);
        const Tensor wt = view_of(w, parse_dtype(w_dtype), "w");
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::head_rms_norm(dev.ctx(), dev.out(xt, true), dev.in(wt), head_dim, eps);
        dev.finish();
      },
      py::arg("x"), py::arg("w"), py::arg("w_dtype") = "float32", py::arg("head_dim"),
      py::arg("eps") = 1e-6f, py::arg("device") = "cpu", "In place on x [T, H*D].");

  ops.def(
      "rope",
      [](py::array& q, py::array& k, const I32Array& positions, const F32Array& cos_sin,
         int head_dim, const std::string& device) {
        Tensor qt = view_of(q, DType::kF32, "q", true);
        Tensor kt = view_of(k, DType::kF32, "k", true);
        const Tensor cs = f32_view(cos_sin, "cos_sin");
        FASTLM_CHECK_ARG(positions.ndim() == 1 && qt.dim() == 2 && positions.shape(0) == qt.size(0),
                         "rope: positions must be [T] with T = q.shape[0]");
        const Tensor pt = index_view(positions);
        ops::check_positions(pt, cs.dim() == 2 ? cs.size(0) : 0);
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::rope(dev.ctx(), dev.out(qt, true), dev.out(kt, true), dev.in(pt), dev.in(cs),
                  head_dim);
        dev.finish();
      },
      py::arg("q"), py::arg("k"), py::arg("positions"), py::arg("cos_sin"), py::arg("head_dim"),
      py::arg("device") = "cpu", "In place on q [T, Hq*D] and k [T, Hk*D].");

  ops.def(
      "silu_mul",
      [](const F32Array& gate_up, const std::string& device) {
        const Tensor gt = f32_view(gate_up, "gate_up");
        F32Array out =
            new_f32({gt.dim() == 2 ? gt.size(0) : 0, gt.dim() == 2 ? gt.size(1) / 2 : 0});
        Tensor ot = view_out(out);
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::silu_mul(dev.ctx(), dev.in(gt), dev.out(ot));
        dev.finish();
        return out;
      },
      py::arg("gate_up"), py::arg("device") = "cpu");

  ops.def(
      "embedding",
      [](const py::array& table, const std::string& dtype, const I32Array& ids,
         const std::string& device) {
        const Tensor tt = view_of(table, parse_dtype(dtype), "table");
        FASTLM_CHECK_ARG(ids.ndim() == 1, "embedding: ids must be 1-D");
        F32Array out = new_f32({ids.shape(0), tt.dim() == 2 ? tt.size(1) : 0});
        Tensor ot = view_out(out);
        const Tensor it = index_view(ids);
        ops::check_token_ids(it, tt.dim() == 2 ? tt.size(0) : 0);
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::embedding(dev.ctx(), dev.in(tt), dev.in(it), dev.out(ot));
        dev.finish();
        return out;
      },
      py::arg("table"), py::arg("dtype"), py::arg("ids"), py::arg("device") = "cpu");

  ops.def(
      "add_bias",
      [](py::array& x, const py::array& b, const std::string& b_dtype, const std::string& device) {
        Tensor xt = view_of(x, DType::kF32, "x", true);
        const Tensor bt = view_of(b, parse_dtype(b_dtype), "b");
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::add_bias(dev.ctx(), dev.out(xt, true), dev.in(bt));
        dev.finish();
      },
      py::arg("x"), py::arg("b"), py::arg("b_dtype") = "float32", py::arg("device") = "cpu",
      "In place on x [M, N].");

  ops.def(
      "layer_norm",
      [](const F32Array& x, const py::array& w, const py::array& b, const std::string& w_dtype,
         float eps, const std::string& device) {
        const DType dt = parse_dtype(w_dtype);
        const Tensor xt = f32_view(x, "x");
        const Tensor wt = view_of(w, dt, "w");
        const Tensor bt = view_of(b, dt, "b");
        F32Array y = new_f32(xt.shape());
        Tensor yt = view_out(y);
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::layer_norm(dev.ctx(), dev.in(xt), dev.in(wt), dev.in(bt), eps, dev.out(yt));
        dev.finish();
        return y;
      },
      py::arg("x"), py::arg("w"), py::arg("b"), py::arg("w_dtype") = "float32",
      py::arg("eps") = 1e-5f, py::arg("device") = "cpu",
      "(x - mean) / sqrt(var + eps) * w + b, per row of x [M, H].");

  ops.def(
      "add_layer_norm",
      [](py::array& residual, const F32Array& x, const py::array& w, const py::array& b,
         const std::string& w_dtype, float eps, const std::string& device) {
        const DType dt = parse_dtype(w_dtype);
        Tensor rt = view_of(residual, DType::kF32, "residual", true);
        const Tensor xt = f32_view(x, "x");
        const Tensor wt = view_of(w, dt, "w");
        const Tensor bt = view_of(b, dt, "b");
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::add_layer_norm(dev.ctx(), dev.out(rt, true), dev.in(xt), dev.in(wt), dev.in(bt), eps);
        dev.finish();
      },
      py::arg("residual"), py::arg("x"), py::arg("w"), py::arg("b"), py::arg("w_dtype") = "float32",
      py::arg("eps") = 1e-5f, py::arg("device") = "cpu",
      "residual = layer_norm(residual + x), in place.");

  ops.def(
      "gelu",
      [](py::array& x, bool tanh_approximation, const std::string& device) {
        Tensor xt = view_of(x, DType::kF32, "x", true);
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::gelu(dev.ctx(), dev.out(xt, true), tanh_approximation);
        dev.finish();
      },
      py::arg("x"), py::arg("tanh_approximation") = false, py::arg("device") = "cpu",
      "In place on float32 x: erf GELU, or the tanh approximation.");

  ops.def(
      "write_kv",
      [](const F32Array& k, const F32Array& v, py::array& k_cache, py::array& v_cache,
         const std::string& cache_dtype, const I64Array& slot_mapping, const std::string& device) {
        const DType dt = parse_dtype(cache_dtype);
        const Tensor kt = f32_view(k, "k");
        const Tensor vt = f32_view(v, "v");
        Tensor kc = view_of(k_cache, dt, "k_cache", true);
        Tensor vc = view_of(v_cache, dt, "v_cache", true);
        FASTLM_CHECK_ARG(
            slot_mapping.ndim() == 1 && kt.dim() >= 1 && slot_mapping.shape(0) == kt.size(0),
            "write_kv: slot_mapping must be [T] with T = k.shape[0]");
        const Tensor st = index_view(slot_mapping);
        if (kc.dim() == 4) ops::check_slot_mapping(st, kc.size(0) * kc.size(1));
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::write_kv(dev.ctx(), dev.in(kt), dev.in(vt), dev.out(kc, true), dev.out(vc, true),
                      dev.in(st));
        dev.finish();
      },
      py::arg("k"), py::arg("v"), py::arg("k_cache"), py::arg("v_cache"), py::arg("cache_dtype"),
      py::arg("slot_mapping"), py::arg("device") = "cpu",
      "Caches [num_blocks, block_size, Hk, D] are written in place; slot < 0 skips a token.");

  ops.def(
      "linear_act",
      [](const py::array& x, const std::string& x_dtype, const py::array& w,
         const std::string& w_dtype, std::optional<F32Array> bias, const std::string& act,
         const std::string& y_dtype, const std::string& device) {
        const Tensor xt = view_of(x, parse_dtype(x_dtype), "x");
        const Tensor wt = view_of(w, parse_dtype(w_dtype), "w");
        const DType yd = parse_dtype(y_dtype);
        FASTLM_CHECK_ARG(xt.dim() == 2 && wt.dim() == 2, "linear_act: x and w must be 2-D");
        ops::Activation a = ops::Activation::kNone;
        if (act == "gelu") {
          a = ops::Activation::kGeluErf;
        } else if (act == "gelu_tanh") {
          a = ops::Activation::kGeluTanh;
        } else {
          FASTLM_CHECK_ARG(act == "none", "act must be none, gelu or gelu_tanh, got '", act, "'");
        }
        const std::vector<int64_t> shape{xt.size(0), wt.size(0)};
        py::array out = yd == DType::kF32 ? py::array(py::array_t<float>(shape))
                                          : py::array(py::array_t<uint16_t>(shape));
        Tensor yt = view_of(out, yd, "y", true);
        std::optional<Tensor> bt;
        if (bias) bt = f32_view(*bias, "bias");
        OnDevice dev(device);
        py::gil_scoped_release release;
        std::optional<Tensor> bd;
        if (bt) bd = dev.in(*bt);
        ops::linear(dev.ctx(), dev.in(xt), dev.in(wt), bd ? &*bd : nullptr, dev.out(yt), a);
        dev.finish();
        return out;
      },
      py::arg("x"), py::arg("x_dtype"), py::arg("w"), py::arg("w_dtype"), py::arg("bias"),
      py::arg("act"), py::arg("y_dtype"), py::arg("device") = "cpu",
      "y = act(x @ w^T + bias); x and y float32 values or bfloat16 bits (uint16).");

  ops.def(
      "encoder_attention",
      [](const F32Array& qkv, const I32Array& query_start_loc, int num_heads, int head_dim,
         float scale, const std::string& device) {
        const Tensor qt = f32_view(qkv, "qkv");
        FASTLM_CHECK_ARG(query_start_loc.ndim() == 1 && query_start_loc.shape(0) >= 2,
                         "encoder_attention: query_start_loc must be [num_seqs + 1]");
        FASTLM_CHECK_ARG(qt.dim() == 2, "encoder_attention: qkv must be 2-D");
        const Tensor qsl = index_view(query_start_loc);
        ops::check_query_start_loc(qsl, qt.size(0));
        F32Array out = new_f32({qt.size(0), static_cast<int64_t>(num_heads) * head_dim});
        Tensor ot = view_out(out);
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::encoder_attention(dev.ctx(), dev.in(qt), dev.in(qsl), num_heads, head_dim, scale,
                               dev.out(ot));
        dev.finish();
        return out;
      },
      py::arg("qkv"), py::arg("query_start_loc"), py::arg("num_heads"), py::arg("head_dim"),
      py::arg("scale"), py::arg("device") = "cpu",
      "Bidirectional attention within each sequence; qkv rows are [q | k | v] (H*D each).");

  ops.def(
      "paged_attention",
      [](const F32Array& q, const py::array& k_cache, const py::array& v_cache,
         const std::string& cache_dtype, const I32Array& query_start_loc, const I32Array& seq_lens,
         const I32Array& block_tables, int num_q_heads, int num_kv_heads, int head_dim, float scale,
         int sliding_window, const std::string& device) {
        const DType dt = parse_dtype(cache_dtype);
        const Tensor qt = f32_view(q, "q");
        const Tensor kc = view_of(k_cache, dt, "k_cache");
        const Tensor vc = view_of(v_cache, dt, "v_cache");
        const int num_seqs = static_cast<int>(seq_lens.size());
        FASTLM_CHECK_ARG(query_start_loc.ndim() == 1 && query_start_loc.shape(0) == num_seqs + 1,
                         "paged_attention: query_start_loc must be [num_seqs + 1]");
        FASTLM_CHECK_ARG(block_tables.ndim() == 2 && block_tables.shape(0) == num_seqs,
                         "paged_attention: block_tables must be [num_seqs, max_blocks_per_seq]");
        FASTLM_CHECK_ARG(kc.dim() == 4, "paged_attention: caches must be 4-D");
        ops::AttentionBatch batch;
        batch.query_start_loc = index_view(query_start_loc);
        batch.seq_lens = index_view(seq_lens);
        batch.block_tables = index_view(block_tables);
        batch.block_size = static_cast<int>(kc.size(1));
        FASTLM_CHECK_ARG(qt.dim() == 2, "paged_attention: q must be 2-D");
        ops::check_attention_batch(batch, qt.size(0), kc.size(0));
        F32Array out = new_f32(qt.shape());
        Tensor ot = view_out(out);
        OnDevice dev(device);
        py::gil_scoped_release release;
        ops::AttentionBatch on_device = batch;
        on_device.query_start_loc = dev.in(batch.query_start_loc);
        on_device.seq_lens = dev.in(batch.seq_lens);
        on_device.block_tables = dev.in(batch.block_tables);
        ops::paged_attention(dev.ctx(), dev.in(qt), dev.in(kc), dev.in(vc), on_device, num_q_heads,
                             num_kv_heads, head_dim, scale, sliding_window, dev.out(ot));
        dev.finish();
        return out;
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("cache_dtype"),
      py::arg("query_start_loc"), py::arg("seq_lens"), py::arg("block_tables"),
      py::arg("num_q_heads"), py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("scale"),
      py::arg("sliding_window") = 0, py::arg("device") = "cpu");
}
