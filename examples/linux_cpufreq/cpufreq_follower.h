/*
 * cpufreq_follower.h - follow a Linux CPU's frequency and tell a model about every change.
 *
 * A thread reads cpufreq's current frequency (kHz) from sysfs, e.g.
 * /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq, every `period_us` microseconds and calls
 * `on_change(khz, context)` when it differs from the last value read (and once at start). Pass a callback
 * that calls the model's NAME_on_frequency: the level changes at the next inference boundary, so the
 * thread never waits for an inference. Polling, because cpufreq offers no notification to user space
 * (sysfs_notify is not raised for scaling_cur_freq); a period of a few milliseconds costs one small read.
 */
#ifndef CPUFREQ_FOLLOWER_H
#define CPUFREQ_FOLLOWER_H

#include <pthread.h>
#include <stdint.h>

typedef void (*cpufreq_callback_t)(uint32_t khz, void *context);

typedef struct {
  const char *path;
  unsigned long period_us;
  cpufreq_callback_t on_change;
  void *context;
  pthread_t thread;
  pthread_mutex_t lock; /* guards stop; `wake` cuts the wait short when it is set */
  pthread_cond_t wake;
  int stop;
} cpufreq_follower_t;

/* The frequency in `path` (a decimal number of kHz and a newline, as cpufreq writes it): 0 on success,
 * -1 if the file cannot be read or holds no number in [1, UINT32_MAX]. */
int cpufreq_read_khz(const char *path, uint32_t *khz);

/* Start following `path`: 0 on success, -1 if its first read fails or the thread cannot start. The
 * callback runs on the follower's thread; `follower` must live until cpufreq_follower_stop. */
int cpufreq_follower_start(cpufreq_follower_t *follower, const char *path, unsigned long period_us,
                           cpufreq_callback_t on_change, void *context);

/* Stop the thread and wait for it. */
void cpufreq_follower_stop(cpufreq_follower_t *follower);

#endif /* CPUFREQ_FOLLOWER_H */
