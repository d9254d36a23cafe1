/* Runs one library's dense GEMM Y[m,n] = X[m,k] W[k,n] (row-major fp32, W stored [in, out] as rt3c's dense
 * kernel reads it) `reps` times, for benchmarks/bench_dense_baseline.py:
 *
 *   gemm M K N REPS x.bin w.bin y.bin
 *
 * The benchmark counts the program's executed instructions at two values of REPS; the difference is one
 * call's cost, with startup, file I/O and any first-call setup of the library cancelled out. */
#include <stdio.h>
#include <stdlib.h>

#include "gemm.h"

/* Static buffers for the largest of minilm-l6's shapes at 16 tokens (the Cortex-M firmware has no room
 * for a heap that large next to them). */
#define MAX_X (16 * 1536)
#define MAX_W (1536 * 384)
#define MAX_Y (16 * 1536)
static float x[MAX_X], w[MAX_W], y[MAX_Y];

static int read_floats(const char *path, float *data, long count) {
  FILE *file = fopen(path, "rb");
  if (file == NULL) {
    return 0;
  }
  long got = (long)fread(data, sizeof *data, (size_t)count, file);
  fclose(file);
  return got == count;
}

int main(int argc, char **argv) {
  if (argc != 8) {
    return 2;
  }
  long m = atol(argv[1]), k = atol(argv[2]), n = atol(argv[3]), reps = atol(argv[4]);
  if (m <= 0 || k <= 0 || n <= 0 || m * k > MAX_X || k * n > MAX_W || m * n > MAX_Y) {
    return 3;
  }
  if (!read_floats(argv[5], x, m * k) || !read_floats(argv[6], w, k * n)) {
    return 4;
  }
  for (long rep = 0; rep < reps; ++rep) {
    baseline_gemm((int)m, (int)k, (int)n, x, w, y);
  }
  FILE *out = fopen(argv[7], "wb");
  if (out == NULL || fwrite(y, sizeof *y, (size_t)(m * n), out) != (size_t)(m * n)) {
    return 5;
  }
  fclose(out);
  return 0;
}
