// The Python bindings of cnnlab's native kernels (one extension module for all the sources).
#include <torch/extension.h>

#include <vector>

std::vector<torch::Tensor> max_pool_forward(const torch::Tensor& x);
torch::Tensor max_pool_backward(const torch::Tensor& grad_out, const torch::Tensor& where, int64_t H, int64_t W);
std::vector<torch::Tensor> conv_pool_forward(const torch::Tensor& x, const torch::Tensor& wt,
                                             const torch::Tensor& bias, int64_t C);
std::vector<torch::Tensor> conv_pool_backward(const torch::Tensor& grad_out, const torch::Tensor& where,
                                              const torch::Tensor& x, const torch::Tensor& wt);
std::vector<torch::Tensor> winograd_pool_forward(const torch::Tensor& x, const torch::Tensor& u,
                                                 const torch::Tensor& bias);
std::vector<torch::Tensor> winograd_pool_backward(const torch::Tensor& grad_out, const torch::Tensor& where,
                                                  const torch::Tensor& x, const torch::Tensor& u,
                                                  const torch::Tensor& u_t, bool input_grad);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("max_pool_forward", &max_pool_forward, "2x2 stride-2 max-pool of a channels-last float32 tensor");
  m.def("max_pool_backward", &max_pool_backward, "gradient of max_pool_forward");
  m.def("conv_pool_forward", &conv_pool_forward,
        "one-channel KxK convolution (stride 1, valid) + bias, then 2x2 stride-2 max-pool; returns (out, where)");
  m.def("conv_pool_backward", &conv_pool_backward,
        "gradients of conv_pool_forward for the weights (K*K, C) and the bias (C)");
  m.def("winograd_pool_forward", &winograd_pool_forward,
        "3x3 convolution (stride 1, valid) + bias, then 2x2 stride-2 max-pool, by Winograd F(2x2, 3x3); "
        "takes the transformed filters (16, C, K); returns (out, where)");
  m.def("winograd_pool_backward", &winograd_pool_backward,
        "gradients of winograd_pool_forward: input (or undefined), transformed filters (16, C, K), bias (K)");
}
