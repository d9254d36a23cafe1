/* CMSIS-DSP's arm_mat_mult_f32 (the sources of PyPI's cmsisdsp sdist): its NEON variant with
 * ARM_MATH_NEON on aarch64, its unrolled scalar variant with ARM_MATH_LOOPUNROLL on Cortex-M4. */
#include "arm_math.h"
#include "gemm.h"

void baseline_gemm(int m, int k, int n, const float *x, const float *w, float *y) {
  arm_matrix_instance_f32 a = {(uint16_t)m, (uint16_t)k, (float32_t *)x};
  arm_matrix_instance_f32 b = {(uint16_t)k, (uint16_t)n, (float32_t *)w};
  arm_matrix_instance_f32 c = {(uint16_t)m, (uint16_t)n, y};
  arm_mat_mult_f32(&a, &b, &c);
}
