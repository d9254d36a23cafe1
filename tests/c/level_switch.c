/*
 * level_switch.c - checks the level semantics of a generated bert-tiny runtime (rt3c tests).
 *
 * 1. Each level alone gives a reference output.
 * 2. Switching levels between inferences gives exactly each level's reference.
 * 3. A SIGALRM handler requests random levels every 50 us while inferences run: every output must equal
 *    the reference of the level the inference ran at (an inference never mixes two levels).
 * Prints "ok <inferences> <switches seen>" and exits 0, or names the first mismatch and exits 1.
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "rt3_model.h"

static int64_t ids[RT3_INPUT_INPUT_IDS_ELEMENTS];
static int64_t mask[RT3_INPUT_ATTENTION_MASK_ELEMENTS];
static float reference[RT3_NUM_LEVELS][RT3_OUTPUT_LOGITS_ELEMENTS];
static float out[RT3_OUTPUT_LOGITS_ELEMENTS];
static volatile sig_atomic_t ticks = 0;

static void on_alarm(int signal_number) {
  (void)signal_number;
  ticks++;
  rt3_set_level((int)(ticks % RT3_NUM_LEVELS));
}

int main(void) {
  int i, level, previous = -1, switches = 0;
  struct sigaction action;
  struct itimerval timer;
  for (i = 0; i < RT3_INPUT_INPUT_IDS_ELEMENTS; ++i) {
    ids[i] = (i * 37 + 11) % 1000;
    mask[i] = i < RT3_INPUT_INPUT_IDS_ELEMENTS - 3 ? 1 : 0;
  }
  if (rt3_init() != RT3_OK) return 1;
  for (level = 0; level < RT3_NUM_LEVELS; ++level) {
    if (rt3_set_level(level) != RT3_OK || rt3_invoke(ids, mask, reference[level]) != RT3_OK) return 1;
  }
  if (memcmp(reference[0], reference[RT3_NUM_LEVELS - 1], sizeof reference[0]) == 0) {
    printf("levels give identical outputs: the test would prove nothing\n");
    return 1;
  }
  for (i = 0; i < 30; ++i) {
    level = (i * 7) % RT3_NUM_LEVELS;
    rt3_set_level(level);
    if (rt3_invoke(ids, mask, out) != RT3_OK || rt3_active_level() != level ||
        memcmp(out, reference[level], sizeof out) != 0) {
      printf("switch %d to level %d: wrong output\n", i, level);
      return 1;
    }
  }
  memset(&action, 0, sizeof action);
  action.sa_handler = on_alarm;
  sigaction(SIGALRM, &action, NULL);
  timer.it_interval.tv_sec = 0;
  timer.it_interval.tv_usec = 50;
  timer.it_value = timer.it_interval;
  setitimer(ITIMER_REAL, &timer, NULL);
  for (i = 0; i < STRESS_INFERENCES; ++i) {
    if (rt3_invoke(ids, mask, out) != RT3_OK) return 1;
    level = rt3_active_level();
    if (memcmp(out, reference[level], sizeof out) != 0) {
      printf("inference %d at level %d: output mixes levels\n", i, level);
      return 1;
    }
    switches += level != previous;
    previous = level;
  }
  timer.it_interval.tv_usec = 0;
  timer.it_value.tv_usec = 0;
  setitimer(ITIMER_REAL, &timer, NULL);
  printf("ok %d %d\n", STRESS_INFERENCES, switches);
  return 0;
}
