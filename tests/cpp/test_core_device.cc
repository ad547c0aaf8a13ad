// Device-aware memory: the CPU allocator, copies between tensors and devices, views sharing
// storage, the workspace, the kernel Status type; and that a device without a backend fails
// with a clear error instead of touching memory.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/exec_context.h"
#include "core/status.h"
#include "core/tensor.h"

namespace fastlm {
namespace {

// A stand-in device allocator over host memory that records its traffic, so the routing of
// allocations, frees and copies through a registered allocator is observable.
class RecordingAllocator final : public Allocator {
 public:
  Device device() const override { return Device::kCUDA; }
  void* allocate(size_t bytes) override {
    ++allocations;
    return cpu_allocator().allocate(bytes);
  }
  void deallocate(void* p, size_t bytes) override {
    ++frees;
    cpu_allocator().deallocate(p, bytes);
  }
  void zero(void* p, size_t bytes, void*) override {
    ++zeros;
    std::memset(p, 0, bytes);
  }
  void copy(void* dst, Device dd, const void* src, Device sd, size_t bytes, void*) override {
    copies.push_back(std::string(device_name(sd)) + "->" + device_name(dd));
    std::memcpy(dst, src, bytes);
  }
  int allocations = 0, frees = 0, zeros = 0;
  std::vector<std::string> copies;
};

struct Registered {
  explicit Registered(Allocator* a) { register_allocator(Device::kCUDA, a); }
  ~Registered() { register_allocator(Device::kCUDA, nullptr); }
};

TEST(CoreDevice, CpuAllocatorIsAlignedAndZeroes) {
  Allocator& a = allocator_for(Device::kCPU);
  EXPECT_EQ(&a, &cpu_allocator());
  EXPECT_EQ(a.device(), Device::kCPU);
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{1000}}) {
    void* p = a.allocate(bytes);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
    a.deallocate(p, bytes);
  }
  Tensor z = Tensor::zeros({3, 4}, DType::kI32, Device::kCPU);
  for (int64_t i = 0; i < z.numel(); ++i) EXPECT_EQ(z.data<int32_t>()[i], 0);
  EXPECT_THROW(register_allocator(Device::kCPU, &cpu_allocator()), Error);
}

TEST(CoreDevice, NoBackendMeansAClearError) {
  try {
    Tensor::empty({4}, DType::kF32, Device::kCUDA);
    FAIL() << "allocated on a device without an allocator";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA allocator"), std::string::npos) << e.what();
  }
}

TEST(CoreDevice, CopiesBetweenHostTensors) {
  Tensor a = Tensor::empty({2, 3}, DType::kF32);
  for (int i = 0; i < 6; ++i) a.data<float>()[i] = static_cast<float>(i) * 1.5f;
  Tensor b = a.copy_to(Device::kCPU);
  EXPECT_NE(b.data(), a.data());
  EXPECT_EQ(b.shape(), a.shape());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0);
  Tensor c = Tensor::zeros({2, 3}, DType::kF32);
  c.copy_from(a);
  EXPECT_EQ(c.data<float>()[5], 7.5f);
  Tensor wrong = Tensor::zeros({3, 2}, DType::kF32);
  EXPECT_THROW(wrong.copy_from(a), Error);
  Tensor wrong_dtype = Tensor::zeros({2, 3}, DType::kI32);
  EXPECT_THROW(wrong_dtype.copy_from(a), Error);
}

TEST(CoreDevice, DeviceTensorsGoThroughTheirAllocator) {
  RecordingAllocator rec;
  Registered reg(&rec);
  Tensor host = Tensor::empty({4}, DType::kI64);
  for (int i = 0; i < 4; ++i) host.data<int64_t>()[i] = 10 + i;
  {
    Tensor dev = host.copy_to(Device::kCUDA);
    EXPECT_EQ(dev.device(), Device::kCUDA);
    EXPECT_EQ(rec.allocations, 1);
    Tensor dz = Tensor::zeros({4}, DType::kI64, Device::kCUDA);
    EXPECT_EQ(rec.zeros, 1);
    dz.copy_from(dev);  // device to device
    Tensor back = dz.copy_to(Device::kCPU);
    EXPECT_EQ(back.device(), Device::kCPU);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(back.data<int64_t>()[i], 10 + i);
    // A view shares the device storage and keeps it alive.
    Tensor v = dev.slice_rows(1, 3);
    EXPECT_EQ(v.device(), Device::kCUDA);
    EXPECT_EQ(v.data<int64_t>(), dev.data<int64_t>() + 1);
    EXPECT_THROW(dev.to(DType::kF32), Error);  // conversions are host-only
  }
  EXPECT_EQ(rec.allocations, 2);
  EXPECT_EQ(rec.frees, 2);  // every device tensor freed through the allocator that made it
  EXPECT_EQ(rec.copies, (std::vector<std::string>{"cpu->cuda", "cuda->cuda", "cuda->cpu"}));
}

TEST(CoreDevice, ViewsShareStorage) {
  Tensor t = Tensor::zeros({4, 2}, DType::kF32);
  Tensor rows = t.slice_rows(2, 4);
  Tensor flat = t.reshape({8});
  rows.data<float>()[0] = 3.0f;
  EXPECT_EQ(t.data<float>()[4], 3.0f);
  EXPECT_EQ(flat.data<float>()[4], 3.0f);
  Tensor v = Tensor::view(t.data(), {8}, DType::kF32, nullptr, Device::kCPU);
  EXPECT_EQ(v.device(), Device::kCPU);
  EXPECT_EQ(v.data<float>()[4], 3.0f);
}

TEST(CoreDevice, WorkspaceGrowsOnlyWhenAskedForMore) {
  Workspace ws(Device::kCPU);
  EXPECT_EQ(ws.capacity(), 0u);
  ws.reserve(1024);
  void* p = ws.get(512);
  EXPECT_EQ(ws.capacity(), 1024u);
  EXPECT_EQ(ws.get(1024), p);
  EXPECT_NE(ws.get(4096), nullptr);
  EXPECT_EQ(ws.capacity(), 4096u);
}

TEST(CoreDevice, KernelStatusBecomesAnException) {
  EXPECT_NO_THROW(check_status(Status::Ok(), "op"));
  EXPECT_THROW(check_status({StatusCode::kInvalidArgument, "bad shape"}, "op"), InvalidArgument);
  EXPECT_THROW(check_status({StatusCode::kUnsupported, "no kernel"}, "op"), InvalidArgument);
  try {
    check_status({StatusCode::kDeviceError, "launch failed"}, "rms_norm");
    FAIL();
  } catch (const InvalidArgument&) {
    FAIL() << "a device error is not the caller's fault";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "rms_norm: device error: launch failed");
  }
}

}  // namespace
}  // namespace fastlm
