// No build step yet: the CUDA kernels (issue 5) will be compiled here with nvcc.
fn main() {}
