// Eigen 3 (Debian libeigen3-dev): its blocked, packed GEBP kernel with NEON packets on aarch64.
#include <Eigen/Core>

#include "gemm.h"

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

extern "C" void baseline_gemm(int m, int k, int n, const float *x, const float *w, float *y) {
  Eigen::Map<const RowMajor> xs(x, m, k);
  Eigen::Map<const RowMajor> ws(w, k, n);
  Eigen::Map<RowMajor> ys(y, m, n);
  ys.noalias() = xs * ws;
}
