/* The one function each library's wrapper provides to gemm_main.c. */
#ifndef DENSE_BASELINE_GEMM_H
#define DENSE_BASELINE_GEMM_H
#ifdef __cplusplus
extern "C" {
#endif
/* Y[m,n] = X[m,k] W[k,n], all row-major. */
void baseline_gemm(int m, int k, int n, const float *x, const float *w, float *y);
#ifdef __cplusplus
}
#endif
#endif
