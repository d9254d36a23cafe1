/*
 * main.c - bert-tiny (`rt3c compile --prefix bert_tiny`) following the CPU's frequency on Linux.
 *
 *   follow_cpufreq /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq [PERIOD_US]
 *
 * The follower thread hands every frequency change to bert_tiny_on_frequency (printing "khz K"); each
 * line read from stdin runs one inference, which prints "level L" for the level it ran at. End of input
 * ends the program. The inputs are fixed token ids: the point is which level runs.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>

#include "bert_tiny_model.h"
#include "cpufreq_follower.h"

static int64_t input_ids[BERT_TINY_INPUT_INPUT_IDS_ELEMENTS];
static int64_t attention_mask[BERT_TINY_INPUT_ATTENTION_MASK_ELEMENTS];
static float logits[BERT_TINY_OUTPUT_LOGITS_ELEMENTS];

static void on_change(uint32_t khz, void *context) {
  (void)context;
  /* Safe from any thread: the request takes effect when the next inference starts. */
  bert_tiny_on_frequency(khz);
  printf("khz %lu\n", (unsigned long)khz);
  fflush(stdout);
}

int main(int argc, char **argv) {
  cpufreq_follower_t follower;
  char line[64];
  size_t i;
  unsigned long period_us = argc > 2 ? strtoul(argv[2], NULL, 10) : 10000ul;
  if (argc < 2 || argc > 3 || period_us == 0) {
    fprintf(stderr, "usage: %s SCALING_CUR_FREQ_PATH [PERIOD_US]\n", argv[0]);
    return 2;
  }
  for (i = 0; i < BERT_TINY_INPUT_INPUT_IDS_ELEMENTS; ++i) {
    input_ids[i] = (int64_t)(i * 7 % BERT_TINY_INPUT_INPUT_IDS_LIMIT);
    attention_mask[i] = 1;
  }
  if (bert_tiny_init() != BERT_TINY_OK) {
    return 1;
  }
  if (cpufreq_follower_start(&follower, argv[1], period_us, on_change, NULL) != 0) {
    fprintf(stderr, "%s: cannot read a frequency from %s\n", argv[0], argv[1]);
    return 2;
  }
  while (fgets(line, sizeof line, stdin) != NULL) {
    if (bert_tiny_invoke(input_ids, attention_mask, logits) != BERT_TINY_OK) {
      cpufreq_follower_stop(&follower);
      return 1;
    }
    printf("level %d\n", bert_tiny_active_level());
    fflush(stdout);
  }
  cpufreq_follower_stop(&follower);
  return 0;
}
