/*
 * level_switch_bench.c - what a level switch costs in a generated bert-tiny runtime (bench_runtime.py,
 * which compiles the model with --prefix bench: the API is bench_*, the macros BENCH_*).
 *
 *   level_switch_bench MODE N
 *
 * MODE set:    N calls of bench_set_level, alternating between the densest and the sparsest level.
 * MODE freq:   N calls of bench_on_frequency, alternating between two frequencies of different levels.
 *              Both print the wall time per call in ns (CLOCK_MONOTONIC).
 * MODE pairs:  N times the levels densest, densest, sparsest, sparsest, each inference after bench_set_level
 *              of its level and timed alone: the first of each pair runs right after a level switch, the
 *              second without one. Prints the median ns of both kinds (medians: robust to preemption).
 * MODE same:   N inferences, the first half at the densest level and the second at the sparsest, each
 *              after bench_set_level to the level it already has (one switch in all).
 * MODE switch: the same inferences and calls, but alternating levels (a switch at every boundary).
 * same and switch are for counting instructions under qemu: of bench_set_level, bench_on_frequency and
 * bench_invoke (its own code: the boundary, the copies and the step loop; kernels are functions of their own).
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_model.h"

static int64_t ids[BENCH_INPUT_INPUT_IDS_ELEMENTS];
static int64_t mask[BENCH_INPUT_ATTENTION_MASK_ELEMENTS];
static float out[BENCH_OUTPUT_LOGITS_ELEMENTS];

#define MAX_PAIRS 100000
static double after_switch[2 * MAX_PAIRS];
static double without_switch[2 * MAX_PAIRS];

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *values, long n) {
  qsort(values, (size_t)n, sizeof values[0], by_value);
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int main(int argc, char **argv) {
  long i, n;
  int status = BENCH_OK;
  const int sparsest = BENCH_NUM_LEVELS - 1;
  double start;
  if (argc != 3 || (n = atol(argv[2])) <= 0) {
    fprintf(stderr, "usage: %s set|freq|pairs|same|switch N\n", argv[0]);
    return 2;
  }
  for (i = 0; i < BENCH_INPUT_INPUT_IDS_ELEMENTS; ++i) {
    ids[i] = (i * 37 + 11) % 1000;
    mask[i] = 1;
  }
  if (bench_init() != BENCH_OK) return 1;
  start = now_ns();
  if (strcmp(argv[1], "set") == 0) {
    for (i = 0; i < n; ++i) status |= bench_set_level((i & 1) ? sparsest : 0);
  } else if (strcmp(argv[1], "freq") == 0) {
    /* 2 GHz selects level 0; 1 kHz is below every level's frequency and selects the sparsest. */
    for (i = 0; i < n; ++i) status |= bench_on_frequency((i & 1) ? 1u : 2000000u);
  } else if (strcmp(argv[1], "pairs") == 0) {
    long k = 0;
    if (n > MAX_PAIRS) return 2;
    for (i = 0; i < 2 * n; ++i) {
      const int level = (i & 1) ? sparsest : 0;
      double t = now_ns();
      status |= bench_set_level(level);
      status |= bench_invoke(ids, mask, out);
      after_switch[k] = now_ns() - t;
      t = now_ns();
      status |= bench_set_level(level);
      status |= bench_invoke(ids, mask, out);
      without_switch[k++] = now_ns() - t;
    }
    printf("%.1f %.1f\n", median(after_switch, k), median(without_switch, k));
    return status == BENCH_OK ? 0 : 1;
  } else if (strcmp(argv[1], "same") == 0) {
    for (i = 0; i < n; ++i) {
      status |= bench_set_level(i < n / 2 ? 0 : sparsest);
      status |= bench_invoke(ids, mask, out);
    }
  } else if (strcmp(argv[1], "switch") == 0) {
    for (i = 0; i < n; ++i) {
      status |= bench_set_level((i & 1) ? sparsest : 0);
      status |= bench_invoke(ids, mask, out);
    }
  } else {
    fprintf(stderr, "%s: unknown mode %s\n", argv[0], argv[1]);
    return 2;
  }
  printf("%.2f\n", (now_ns() - start) / (double)n);
  return status == BENCH_OK ? 0 : 1;
}
